"""Notebook 04: the paper's final tables from this run, beside the published numbers.

For every zero-shot direction of the profile, the full ClipSAM (the profile's defaults)
and the APRIL-GAN linear baseline (``umci.enabled=False``, no MMR) are evaluated on the
direction's test datasets and its generalization datasets (MTD, KSDD2). Everything runs
through ``ablations.run_variant``: trained UMCI runs and written maps are reused, so after
notebooks 01-03 this notebook only evaluates.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from clipsam_lib import paths
from clipsam_lib.ablations import PERCENT, run_variant, table_rows
from clipsam_lib.config import Direction, ProfileConfig
from clipsam_lib.evaluate import evaluate_maps, export_mvtec_tiffs, macro_mean
from clipsam_lib.features import clip_score_lookup
from clipsam_lib.io_utils import atomic_path
from clipsam_lib.paper_tables import comparison_long, comparison_wide, per_category
from clipsam_lib.provenance import WEIGHTS_NOTES, weights_kind
from clipsam_lib.tables import write_table
from clipsam_lib.workspace import Workspace, as_workspace

PERCENT_COLUMNS = list(PERCENT.values())
SHORT_METRIC = {"pixel_auroc": "pixel AUROC", "pixel_f1_max": "pixel F1-max",
                "pixel_ap": "pixel AP", "pixel_pro": "PRO"}

# The rows this project contributes to the main table: label -> profile overrides.
OUR_METHODS: dict[str, dict[str, Any]] = {
    "APRIL-GAN linear baseline": {"umci.enabled": False, "mmr.enabled": False},
    "ClipSAM": {},
}


def our_label(profile: ProfileConfig, method: str) -> str:
    return f"{method} (this run: {profile.name}, {weights_kind(profile)})"


def run_final(workspace: Workspace | ProfileConfig, progress: bool = False) -> list[Any]:
    """Every (method, direction, dataset) run of the final tables (reusing finished work)."""
    ws = as_workspace(workspace)
    runs = []
    for direction in ws.profile.directions:
        everything = Direction(direction.train, direction.test + direction.generalization)
        for method, overrides in OUR_METHODS.items():
            runs += run_variant(ws, overrides, our_label(ws.profile, method), everything,
                                progress=progress)
    return runs


def summary_rows(profile: ProfileConfig, runs: list[Any], per_seed: bool = False
                 ) -> pd.DataFrame:
    """Macro means per run (averaged over ``train.seeds`` unless ``per_seed``) with the
    dataset layout and the table label."""
    rows = table_rows(runs, per_seed=per_seed)
    rows["layout"] = [profile.dataset(name).layout for name in rows["dataset"]]
    rows["label"] = rows["variant"]
    return rows


def _is_generalization(profile: ProfileConfig, dataset: str) -> bool:
    return any(dataset in d.generalization for d in profile.directions)


def write_main_tables(profile: ProfileConfig, summary: pd.DataFrame,
                      per_seed: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Main table (MVTec AD + VisA layouts) and generalization table (MTD + KSDD2), each
    under both PRO variants, as CSV/Markdown/LaTeX; the long forms keep every source and,
    given ``per_seed`` (``summary_rows(..., per_seed=True)``), this run's per-seed rows."""
    tables_dir = paths.results_subdir(profile, "tables")
    written = {}
    parts = {
        "final_main": summary[[not _is_generalization(profile, d) for d in summary["dataset"]]],
        "final_generalization": summary[[_is_generalization(profile, d)
                                         for d in summary["dataset"]]],
    }
    for stem, part in parts.items():
        if part.empty:
            continue
        for variant in ("linear200", "mvtec"):
            long = comparison_long(part, pro_column=f"pixel_pro_{variant}")
            wide = comparison_wide(long)
            if per_seed is not None and "seeds" in part:
                seeds_long = comparison_long(per_seed[per_seed["dataset"].isin(part["dataset"])],
                                             pro_column=f"pixel_pro_{variant}")
                long = pd.concat([long, seeds_long[seeds_long["status"] == "this run"]],
                                 ignore_index=True)
            name = f"{stem}_pro_{variant}"
            caption = (
                f"{'Zero-shot segmentation' if stem == 'final_main' else 'Generalization'}: "
                f"pixel AUROC, F1-max, AP, PRO ({variant}) in %. Published rows as reported "
                "(† = not yet checked against the paper's PDF; – = not reported by that paper; "
                "each under its own protocol); "
                f"this run's rows: {profile.name} profile, {profile.eval.protocol} protocol"
                + (f", {WEIGHTS_NOTES[weights_kind(profile)]}"
                   if WEIGHTS_NOTES[weights_kind(profile)] else "")
            )
            write_table(wide, tables_dir / name, caption=caption)
            write_table(long, tables_dir / f"{name}_long", caption=caption, floatfmt=".2f")
            written[name] = wide
    return written


def write_epoch_table(workspace: Workspace | ProfileConfig, progress: bool = False
                      ) -> pd.DataFrame | None:
    """ClipSAM with the checkpoints of ``train.eval_epochs`` (and the last epoch) on every
    direction's test sets -> ``final_epochs``: how much the epoch choice moves the numbers.
    None when the profile asks for no epochs."""
    from clipsam_lib.ablations import IMAGE_METRICS, METRICS
    from clipsam_lib.pipeline import run_dataset
    from clipsam_lib.train import train_umci

    ws = as_workspace(workspace)
    profile = ws.profile
    if not profile.train.eval_epochs:
        return None
    rows = []
    for direction in profile.directions:
        trained = train_umci(ws, direction.train, progress=progress)
        for epoch in sorted({*profile.train.eval_epochs, trained.epochs}):
            checkpoint = (trained.checkpoint if epoch == trained.epochs
                          else trained.run_dir / f"epoch_{epoch:03d}.pt")
            if epoch > trained.epochs or not checkpoint.is_file():
                raise ValueError(f"train.eval_epochs asks for epoch {epoch}, but the run "
                                 f"{trained.run_dir} has {trained.epochs}; lower it.")
            for test in direction.test:
                records = ws.eval_records(test)
                maps = run_dataset(ws, checkpoint, test, records, progress=progress)
                per_class = evaluate_maps(records, ws.dataset(test).root, maps, profile.eval,
                                          profile.clip.image_size, test,
                                          clip_scores=clip_score_lookup(profile, test, records))
                mean = macro_mean(per_class).iloc[0]
                rows.append({"train": direction.train, "dataset": test, "epoch": epoch,
                             "last": epoch == trained.epochs,
                             **{m: float(mean[m]) for m in (*METRICS, *IMAGE_METRICS)},
                             "note": mean.get("note", "")})
    table = pd.DataFrame(rows)
    shown = table.copy()
    metric_columns = [c for c in shown.columns if c.startswith(("pixel_", "image_"))]
    shown[metric_columns] = 100.0 * shown[metric_columns]
    write_table(table, paths.results_subdir(profile, "tables") / "final_epochs", rendered=shown,
                caption="ClipSAM by training epoch (train.eval_epochs), metrics in %")
    return table


def write_per_category(profile: ProfileConfig, runs: list[Any]) -> dict[str, pd.DataFrame]:
    """One per-class table per evaluated dataset for the full ClipSAM."""
    tables_dir = paths.results_subdir(profile, "tables")
    written = {}
    first_seed = (profile.train.seeds or [profile.train.seed])[0]
    for run in runs:
        if run.label != our_label(profile, "ClipSAM") or run.profile.train.seed != first_seed:
            continue  # with several seeds: the first seed's classes
        table = per_category(pd.concat([run.per_class, macro_mean(run.per_class)]))
        name = f"final_per_category_{run.test_dataset}"
        write_table(table, tables_dir / name, caption=(
            f"Per-category pixel metrics (%) of ClipSAM on {run.test_dataset} "
            f"(trained on {run.train_dataset}; {profile.name} profile)"))
        written[name] = table
    return written


def write_protocol_comparison(profile: ProfileConfig, runs: list[Any]) -> pd.DataFrame:
    """The same ClipSAM maps under the "peer" and the official "mvtec" protocol."""
    rows = []
    for run in runs:
        if run.label != our_label(profile, "ClipSAM"):
            continue
        for protocol in ("peer", "mvtec"):
            if protocol == profile.eval.protocol:  # run_variant evaluated this one already
                per_class = run.per_class
            else:
                records = run.records
                per_class = evaluate_maps(
                    records, paths.dataset_root(profile, run.test_dataset), run.maps,
                    replace(profile.eval, protocol=protocol), profile.clip.image_size,
                    run.test_dataset,
                    clip_scores=clip_score_lookup(profile, run.test_dataset, records))
            mean = macro_mean(per_class).iloc[0]
            rows.append({"dataset": run.test_dataset, "seed": run.profile.train.seed,
                         "protocol": protocol,
                         "resolution": mean["resolution"],
                         **{m: 100.0 * float(mean[m]) for m in (
                             "pixel_auroc", "pixel_f1_max", "pixel_ap",
                             "pixel_pro_linear200", "pixel_pro_mvtec")},
                         "note": mean.get("note", "")})
    table = pd.DataFrame(rows)
    write_table(table, paths.results_subdir(profile, "tables") / "final_protocols",
                caption="ClipSAM's maps under the peer protocol (S x S) and the official "
                        "MVTec AD protocol (original resolution), metrics in %")
    return table


def bar_plot(profile: ProfileConfig, summary: pd.DataFrame) -> Path:
    """Our rows beside the published ClipSAM numbers, one panel per metric."""
    long = comparison_long(summary)
    keep = long["method"].isin([*summary["label"].unique(), "ClipSAM"])
    keep &= long["metric"].isin(list(SHORT_METRIC))  # pixel metrics: the published ones
    data = long[keep].dropna(subset=["value"]).copy()
    data.loc[data["status"] != "this run", "method"] = "ClipSAM (published)"
    data["metric"] = data["metric"].map(SHORT_METRIC)
    grid = sns.catplot(data=data, kind="bar", x="table_dataset", y="value", hue="method",
                       col="metric", col_wrap=2, height=3.0, aspect=1.6, sharey=False)
    grid.set_axis_labels("", "%")
    grid.set_titles("{col_name}")
    grid.figure.suptitle(f"This run ({profile.name}) beside the published ClipSAM", y=1.02)
    out = paths.results_subdir(profile, "figures") / "final_bars.png"
    with atomic_path(out) as tmp:
        grid.figure.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(grid.figure)
    return out


def export_for_mvtec_script(profile: ProfileConfig, runs: list[Any]) -> Path | None:
    """ClipSAM's maps of the MVTec-layout test set as the official script's TIFFs."""
    for run in runs:
        layout = profile.dataset(run.test_dataset).layout
        if run.label == our_label(profile, "ClipSAM") and layout == "mvtec":
            out = paths.results_subdir(profile, "maps") / f"mvtec_tiffs_{run.test_dataset}"
            export_mvtec_tiffs(run.records, run.maps, out,
                               sigma=profile.eval.sigma, image_size=profile.clip.image_size)
            return out
    return None
