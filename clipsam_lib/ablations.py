"""MMR and module ablations (notebook 02): a variant = profile overrides -> metrics rows.

A variant is a set of dotted overrides of the profile (``{"mmr.fusion": "B"}``). For each
zero-shot direction of the profile, the variant's UMCI is trained on the auxiliary
dataset (``train_umci`` loads a finished run instead of retraining, so variants that do
not touch UMCI or training share one run), its final maps are written by
``pipeline.run_dataset`` (backbone features from the caches; only UMCI and SAM's decoder
run), evaluated with ``evaluate.evaluate_maps`` and averaged over classes.

Each table has one row per (variant, test dataset), the metrics as fractions in [0, 1]
(``pixel_*``), the same values x 100 for the Markdown/LaTeX renderings (``... (%)``
columns), both PRO variants and the provenance columns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipsam_lib import paths
from clipsam_lib.config import Direction, ProfileConfig
from clipsam_lib.provenance import provenance_columns
from clipsam_lib.workspace import Workspace, as_workspace

# Each table: its name, caption and {row label: overrides}. Everything not overridden is
# the profile's default (UMCI on, MMR on with point+box prompts, 3 levels, fusion A).
TABLES: dict[str, tuple[str, dict[str, dict[str, Any]]]] = {
    "ablation_modules": (
        "Module ablation: CLIP baseline (linear projection), +UMCI, +UMCI+MMR",
        {
            "CLIP baseline": {"umci.enabled": False, "mmr.enabled": False},
            "+UMCI": {"mmr.enabled": False},
            "+UMCI+MMR": {},
            # Not in the paper's table: MMR on the baseline's maps, so the table shows what
            # MMR does on a rough map that UMCI did not produce.
            "CLIP baseline + MMR": {"umci.enabled": False},
        },
    ),
    "ablation_umci_paths": (
        "UMCI internals (with MMR): strip path only, scale path only, both",
        {
            "strip only": {"umci.scale_path": False},
            "scale only": {"umci.strip_path": False},
            "strip + scale": {},
        },
    ),
    "ablation_prompts": (
        "MMR prompts: point, box, point+box",
        {
            "point": {"mmr.prompt_mode": "point"},
            "box": {"mmr.prompt_mode": "box"},
            "point+box": {"mmr.prompt_mode": "point+box"},
        },
    ),
    "ablation_mask_levels": (
        "MMR mask levels used in the fusion: 1, 2, 3",
        {f"{n} level{'s' if n > 1 else ''}": {"mmr.mask_levels": n} for n in (1, 2, 3)},
    ),
    "ablation_fusion": (
        "MMR fusion of SAM's masks with the rough map: A (default), B, C",
        {f"fusion {f}": {"mmr.fusion": f} for f in ("A", "B", "C")},
    ),
    # Not in the paper: the APRIL-GAN baseline row under each of its code's conventions
    # (method.md section 5) and the other reading of each, one switch at a time.
    "ablation_peer_conventions": (
        "APRIL-GAN baseline (no UMCI, no MMR): the profile's conventions, one switch per row",
        {
            label: {"umci.enabled": False, "mmr.enabled": False, **overrides}
            for label, overrides in {
                "profile's conventions": {},
                "logits upsampled with half-pixel centres": {"umci.align_corners": False},
                "logits upsampled with aligned corners": {"umci.align_corners": True},
                "CLIP activation QuickGELU": {"clip.activation": "quick_gelu"},
                "CLIP activation exact GELU": {"clip.activation": "gelu"},
                "masks: stored values": {"eval.mask_binarization": "raw"},
                "masks: luminance (convert L)": {"eval.mask_binarization": "luminance"},
                "image score: map maximum": {"eval.image_score": "map_max"},
                "image score: CLIP global": {"eval.image_score": "clip_global"},
                "image score: CLIP global + map max": {
                    "eval.image_score": "clip_global+map_max"
                },
            }.items()
        },
    ),
}

METRICS = ("pixel_auroc", "pixel_f1_max", "pixel_ap", "pixel_pro_linear200",
           "pixel_pro_mvtec")
PERCENT = {
    "pixel_auroc": "P-AUROC (%)", "pixel_f1_max": "F1-max (%)", "pixel_ap": "AP (%)",
    "pixel_pro_linear200": "PRO linear200 (%)", "pixel_pro_mvtec": "PRO mvtec (%)",
}
# Image level, under the row's eval.image_score (named in the "image_score" column).
IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1_max")
IMAGE_PERCENT = {"image_auroc": "I-AUROC (%)", "image_ap": "I-AP (%)",
                 "image_f1_max": "I-F1-max (%)"}


def ensure_data(profile: ProfileConfig) -> None:
    """Build the embedded benchmark when the profile uses it (idempotent)."""
    if any(spec.synthetic for spec in profile.datasets):
        from clipsam_lib.data.synthetic import build_embedded_benchmark

        build_embedded_benchmark(profile)


def select_directions(
    profile: ProfileConfig, directions: Sequence[int | str] | None = None
) -> list[Direction]:
    """The profile's directions, all (None) or picked by index or training dataset name."""
    if directions is None:
        return list(profile.directions)
    picked = []
    for d in directions:
        if isinstance(d, int):
            picked.append(profile.directions[d])
        else:
            matches = [x for x in profile.directions if x.train == d]
            if not matches:
                raise KeyError(f"No direction trains on {d!r} in profile {profile.name!r}.")
            picked += matches
    return picked


@dataclass
class VariantRun:
    """One variant on one test dataset: its maps and macro-mean metrics."""

    label: str
    profile: ProfileConfig
    train_dataset: str
    test_dataset: str
    maps: Any  # pipeline.MapSet
    records: list[dict[str, Any]]
    per_class: pd.DataFrame
    mean: pd.Series
    index_hash: str  # of the test dataset's index
    checkpoint: Path  # the UMCI run's final.pt (train.train_umci)


# Results of this process, by (variant config hash, direction, test dataset): variants
# repeated across tables (the defaults) are evaluated once.
_RUNS: dict[tuple[str, str, str], VariantRun] = {}


def run_variant(
    workspace: Workspace | ProfileConfig,
    overrides: dict[str, Any],
    label: str,
    direction: Direction,
    progress: bool = False,
) -> list[VariantRun]:
    """Fit (or load) the variant's UMCI for a direction, write (or find) and evaluate its maps.

    Each stage reuses what exists: a finished UMCI run is loaded, maps already written
    under their map key are read, so a variant that changes only ``eval.*`` evaluates
    again without a UMCI forward or a SAM decoder call. With ``train.seeds`` the variant
    runs once per seed (one VariantRun per seed and test set).
    """
    base = as_workspace(workspace).variant(overrides)
    seeds = base.profile.train.seeds or [base.profile.train.seed]
    return [run for seed in seeds
            for run in _run_seed(base.variant({"train.seed": seed}), label, direction,
                                 progress)]


def _run_seed(ws: Workspace, label: str, direction: Direction, progress: bool
              ) -> list[VariantRun]:
    from clipsam_lib.evaluate import evaluate_maps, macro_mean
    from clipsam_lib.features import clip_score_lookup
    from clipsam_lib.pipeline import run_dataset
    from clipsam_lib.train import train_umci

    variant = ws.profile
    runs = []
    trained = None
    for test in direction.test:
        memo = (variant.hash(), direction.train, test)
        if memo in _RUNS:
            runs.append(_relabel(_RUNS[memo], label))
            continue
        if trained is None:
            trained = train_umci(ws, direction.train, progress=progress)
        records = ws.eval_records(test)
        maps = run_dataset(ws, trained.checkpoint, test, records, progress=progress)
        per_class = evaluate_maps(
            records, ws.dataset(test).root, maps, variant.eval,
            variant.clip.image_size, test,
            clip_scores=clip_score_lookup(variant, test, records),
        )
        mean = macro_mean(per_class).iloc[0]
        _RUNS[memo] = VariantRun(label, variant, direction.train, test, maps, records,
                                 per_class, mean, ws.dataset(test).index_hash,
                                 trained.checkpoint)
        runs.append(_RUNS[memo])
    return runs


def _relative_to_results(profile: ProfileConfig, folder: Path) -> str:
    """A map folder as committed tables name it: relative to ``results/<profile>/``."""
    try:
        return str(Path(folder).resolve().relative_to(paths.results_dir(profile).resolve()))
    except ValueError:  # maps written elsewhere (an explicit out_dir)
        return str(folder)


def _relabel(run: VariantRun, label: str) -> VariantRun:
    return dataclasses.replace(run, label=label)


def table_rows(runs: Sequence[VariantRun], per_seed: bool = False) -> pd.DataFrame:
    """One row per (variant, direction, test set): metrics (fractions and %), provenance.

    Runs of several seeds (``train.seeds``) are averaged: the row holds the mean over
    seeds, ``<metric>_std`` the sample standard deviation and ``seeds`` which ones;
    ``per_seed`` gives one row per seed instead, with its ``seed``.
    """
    rows = [_run_row(run) for run in runs]
    if per_seed or len({row["seed"] for row in rows}) <= 1:
        return pd.DataFrame(rows)
    frame = pd.DataFrame(rows)
    keys = ["variant", "train", "dataset"]
    metrics = [*METRICS, *IMAGE_METRICS]
    out = []
    for _, group in frame.groupby(keys, sort=False):
        row = group.iloc[0].to_dict()
        for m in metrics:
            row[m] = float(group[m].mean())
            row[f"{m}_std"] = float(group[m].std(ddof=1)) if len(group) > 1 else float("nan")
        row.update({PERCENT[m]: 100.0 * row[m] for m in METRICS})
        row.update({IMAGE_PERCENT[m]: 100.0 * row[m] for m in IMAGE_METRICS})
        row["seeds"] = ",".join(str(s) for s in group["seed"])
        row["seed"] = "mean"
        row["note"] = "; ".join(n for n in dict.fromkeys(group["note"]) if isinstance(n, str) and n)
        out.append(row)
    return pd.DataFrame(out)


def _run_row(run: VariantRun) -> dict[str, Any]:
    row: dict[str, Any] = {
        "variant": run.label,
        "train": run.train_dataset,
        "dataset": run.test_dataset,
        "seed": run.profile.train.seed,
        "n_images": int(run.mean["n_images"]),
    }
    row.update({m: float(run.mean[m]) for m in (*METRICS, *IMAGE_METRICS)})
    row.update({PERCENT[m]: 100.0 * float(run.mean[m]) for m in METRICS})
    row.update({IMAGE_PERCENT[m]: 100.0 * float(run.mean[m]) for m in IMAGE_METRICS})
    row["image_score"] = run.profile.eval.image_score
    refined = [run.maps.regions(rec) for rec in run.records]
    row["images_refined"] = f"{sum(r > 0 for r in refined)}/{len(refined)}"
    row["regions_per_image"] = float(np.mean(refined)) if refined else 0.0
    row["map_dir"] = _relative_to_results(run.profile, run.maps.dir)
    row["note"] = run.mean.get("note", "")
    row.update(provenance_columns(
        run.profile,
        protocol=run.profile.eval.protocol,
        dataset_index_hash=run.index_hash,
        config_hash=run.profile.hash(),
    ))
    return row


def variant_rows(
    workspace: Workspace | ProfileConfig,
    variants: dict[str, dict[str, Any]],
    directions: Sequence[int | str] | None = None,
    progress: bool = False,
    base: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Metrics rows of every (direction, variant): ``{label: overrides}`` on top of ``base``."""
    return table_rows(variant_runs(workspace, variants, directions, progress, base))


def variant_runs(
    workspace: Workspace | ProfileConfig,
    variants: dict[str, dict[str, Any]],
    directions: Sequence[int | str] | None = None,
    progress: bool = False,
    base: dict[str, Any] | None = None,
) -> list[VariantRun]:
    """The runs of every (direction, variant, seed)."""
    ws = as_workspace(workspace)
    return [
        run
        for direction in select_directions(ws.profile, directions)
        for label, overrides in variants.items()
        for run in run_variant(ws, {**(base or {}), **overrides}, label, direction, progress)
    ]


def write_rows(profile: ProfileConfig, runs: Sequence[VariantRun], name: str, caption: str,
               shown: list[str] | None = None, rendered: pd.DataFrame | None = None
               ) -> pd.DataFrame:
    """Write the table of ``runs`` (seeds averaged) and, with several seeds, its per-seed
    rows as ``<name>_per_seed``; returns the averaged table."""
    from clipsam_lib.tables import write_table

    table = table_rows(runs)
    folder = paths.results_subdir(profile, "tables")
    if "seeds" in table:
        shown = shown and [*shown[:3], "seeds", *shown[3:], "P-AUROC std (%)"]
        table["P-AUROC std (%)"] = 100.0 * table["pixel_auroc_std"]
        caption += "; mean over seeds, std = sample standard deviation"
        write_table(table_rows(runs, per_seed=True), folder / f"{name}_per_seed",
                    caption=f"{caption} (one row per seed)", display_columns=shown and
                    [c for c in shown if c not in ("seeds", "P-AUROC std (%)")] + ["seed"])
    write_table(table, folder / name, caption=caption, display_columns=shown,
                rendered=rendered)
    return table


def ablation_table(
    workspace: Workspace | ProfileConfig,
    name: str,
    directions: Sequence[int | str] | None = None,
    progress: bool = False,
    base: dict[str, Any] | None = None,
    write: bool = True,
) -> pd.DataFrame:
    """Run every variant of ``TABLES[name]`` and write ``results/<profile>/tables/<name>``.

    ``base``: overrides under every variant of the table (e.g. ``{"umci.enabled": False}``
    to study MMR on the CLIP baseline's maps); the caption says so.
    """
    ws = as_workspace(workspace)
    profile = ws.profile
    caption, variants = TABLES[name]
    base = base or {}
    runs = variant_runs(ws, variants, directions, progress, base)
    if not write:
        return table_rows(runs)
    shown = ["variant", "train", "dataset", *PERCENT.values(), "I-AUROC (%)",
             "image_score", "images_refined"]
    on = f"; every row with {base}" if base else ""
    return write_rows(profile, runs, name, shown=shown,
                      caption=f"{caption} ({profile.name} profile{on}; pixel metrics x100, "
                              f"{profile.eval.protocol} protocol; {provenance_note(profile)})")


def provenance_note(profile: ProfileConfig) -> str:
    from clipsam_lib.provenance import WEIGHTS_NOTES, weights_kind

    return WEIGHTS_NOTES[weights_kind(profile)] or "pretrained backbones"


def all_tables(
    workspace: Workspace | ProfileConfig, directions: Sequence[int | str] | None = None,
    progress: bool = False, mmr_base: dict[str, Any] | None = None,
) -> dict[str, pd.DataFrame]:
    """Every table of ``TABLES``; ``mmr_base`` goes under the MMR tables' variants.

    Variants shared between tables (the defaults) are run once.
    """
    ws = as_workspace(workspace)
    mmr_tables = ("ablation_prompts", "ablation_mask_levels", "ablation_fusion")
    return {
        name: ablation_table(ws, name, directions, progress,
                             base=mmr_base if name in mmr_tables else None)
        for name in TABLES
    }


# -- figure samples ------------------------------------------------------------------------


def figure_samples(
    workspace: Workspace | ProfileConfig,
    direction: Direction | None = None,
    n: int = 4,
    overrides: dict[str, Any] | None = None,
    *,
    prompted_on_defect: bool = False,
) -> list[Any]:
    """Anomalous test images (one per class first) with ClipSAM's output, for the figures.

    Uses the variant's trained UMCI and the cached backbone features. With
    ``prompted_on_defect``, only images where at least one of MMR's prompt points lies on
    the defect (within ``pointing.TOLERANCE`` px, as ``mmr_pointing`` counts them), in the
    same order: what SAM makes of MMR's prompts when they are right. That is a choice by
    where MMR points, not by how good the final map is; the figure's name must say so.
    """
    from clipsam_lib.data.io import read_image_rgb
    from clipsam_lib.evaluate import ground_truth
    from clipsam_lib.figures import FigureSample
    from clipsam_lib.pipeline import ClipSAMPredictor
    from clipsam_lib.pointing import TOLERANCE, prompt_hits, tolerant_region
    from clipsam_lib.train import train_umci

    ws = as_workspace(workspace).variant(overrides)
    variant = ws.profile
    if prompted_on_defect and not variant.mmr.enabled:
        raise ValueError("prompted_on_defect needs MMR's prompts; this variant has mmr.enabled "
                         "false: drop the option or the override.")
    direction = direction or variant.directions[0]
    test = direction.test[0]
    trained = train_umci(ws, direction.train, progress=False)
    predictor = ClipSAMPredictor(ws, trained.checkpoint)
    root = ws.dataset(test).root
    samples = []
    for rec in figure_records(ws, test, None if prompted_on_defect else n):
        image = read_image_rgb(root / rec["img_path"])
        gt = ground_truth(rec, root, variant.eval)
        result = predictor.predict(image, rec["cls_name"])
        if prompted_on_defect and not prompt_hits(result.prompts.points,
                                                  tolerant_region(gt, TOLERANCE)).any():
            continue
        samples.append(FigureSample(image, gt, result,
                                    f"{rec['cls_name']}/{rec['specie_name']}"))
        if len(samples) == n:
            break
    return samples


def figure_records(ws: Workspace, test: str, n: int | None) -> list[dict[str, Any]]:
    """The figures' images: ``n`` (None: all) anomalous test images, one per class first
    (no choice by how well the method does on them)."""
    anomalous = [r for r in ws.eval_records(test) if r["anomaly"]]
    return _spread_over_classes(anomalous, len(anomalous) if n is None else n)


def _spread_over_classes(records: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Up to n records, round-robin over classes (deterministic)."""
    by_class: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_class.setdefault(rec["cls_name"], []).append(rec)
    picked: list[dict[str, Any]] = []
    depth = 0
    while len(picked) < n and any(depth < len(v) for v in by_class.values()):
        picked += [v[depth] for v in by_class.values() if depth < len(v)][: n - len(picked)]
        depth += 1
    return picked


def map_dir_sizes(runs: Sequence[VariantRun]) -> pd.DataFrame:
    """Disk use of each variant's maps (for the notebook's bookkeeping)."""
    seen = {}
    for run in runs:
        folder = Path(run.maps.dir)
        seen[str(folder)] = sum(p.stat().st_size for p in folder.rglob("*.np[yz]"))
    return pd.DataFrame({"map_dir": list(seen), "MiB": np.array(list(seen.values())) / 2**20})
