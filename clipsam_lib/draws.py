"""Other draws of the embedded benchmark: how much of a miniature figure is its draw.

The smoke profile evaluates one draw of the embedded benchmark (``synthetic_seed``): 64
test images per dataset, whose pictures, crops and defects come from that seed. A figure
measured on so few images moves with the draw. ``run_draw`` runs the module ablation's
three variants (CLIP baseline, +UMCI, +UMCI+MMR) and SAM's ground-truth-box check on
another draw: same classes, sizes, backbones and settings, other pictures, crops and
defects, built under ``<data_dir>-draws/seed<N>`` (features under ``<cache_dir>-draws``).
``spread_table`` puts the draws side by side and ``write_spread_tables`` writes them:
each draw's rows, then per direction and variant the mean, standard deviation and range,
and on how many draws each of the module ablation's comparisons holds.

Only for profiles whose datasets are all the embedded benchmark's (``synthetic: true``):
a real dataset has one draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from clipsam_lib import ablations, paths
from clipsam_lib.config import ProfileConfig
from clipsam_lib.provenance import COLUMNS
from clipsam_lib.workspace import Workspace

VARIANTS = ("CLIP baseline", "+UMCI", "+UMCI+MMR")
SAM_ROW = "SAM, ground-truth boxes"
METRICS = ("pixel_auroc", "pixel_pro_linear200", "pixel_pro_mvtec", "pixel_f1_max", "pixel_ap")
SAM_NOTE = "SAM's check: the median IoU of its top mask for each defect's own box; no map"
PROVENANCE = COLUMNS
# Each comparison: (label, (metric, variant that should be higher, variant it is compared to)).
COMPARISONS = (
    ("+UMCI >= baseline, P-AUROC", ("pixel_auroc", "+UMCI", "CLIP baseline")),
    # The official PRO: APRIL-GAN's 200 linear thresholds cannot rank a fused map's
    # pixels outside SAM's masks (notebook 02), and the comparison is between rough maps.
    ("+UMCI >= baseline, PRO (official)", ("pixel_pro_mvtec", "+UMCI", "CLIP baseline")),
    ("MMR > rough map, F1-max", ("pixel_f1_max", "+UMCI+MMR", "+UMCI")),
    ("MMR > rough map, AP", ("pixel_ap", "+UMCI+MMR", "+UMCI")),
    ("+UMCI+MMR > baseline, F1-max", ("pixel_f1_max", "+UMCI+MMR", "CLIP baseline")),
)


def real_datasets(profile: ProfileConfig) -> list[str]:
    """The profile's datasets that are not the embedded benchmark's (they have one draw)."""
    return [spec.name for spec in profile.datasets if not spec.synthetic]


def draw_workspace(ws: Workspace, seed: int,
                   directions: Sequence[int | str] | None = None) -> Workspace:
    """The workspace of draw ``seed``: the profile's own draw is ``ws`` itself; another
    draw's profile holds only the chosen directions and the datasets they train and test
    on, so that building its benchmark and filling its caches touch nothing else."""
    profile = ws.profile
    if real_datasets(profile):
        raise ValueError(f"Profile {profile.name!r} has datasets that are not the embedded "
                         f"benchmark's ({', '.join(real_datasets(profile))}): other draws "
                         f"exist only for synthetic datasets; leave spread_draws empty.")
    if seed == profile.synthetic_seed:
        return ws
    picked = ablations.select_directions(profile, directions)
    used = {d.train for d in picked} | {t for d in picked for t in d.test}
    return ws.variant({
        "synthetic_seed": seed,
        "data_dir": f"{profile.data_dir}-draws/seed{seed}",
        "cache_dir": f"{profile.cache_dir}-draws/seed{seed}",
        "datasets": [spec for spec in profile.to_dict()["datasets"] if spec["name"] in used],
        "directions": [{"train": d.train, "test": list(d.test)} for d in picked],
    })


def run_draw(ws: Workspace, seed: int, directions: Sequence[int | str] | None = None,
             progress: bool = False) -> list[dict[str, Any]]:
    """Build draw ``seed``'s benchmark and CLIP features where missing, then run the three
    variants and SAM's ground-truth-box check on it; one row per (direction, variant)."""
    from clipsam_lib.extract import extract_profile_features
    from clipsam_lib.provenance import provenance_columns
    from clipsam_lib.sam_check import box_prompt_ious

    draw = draw_workspace(ws, seed, directions)
    ablations.ensure_data(draw.profile)
    extract_profile_features(draw, progress=progress)
    variants = ablations.TABLES["ablation_modules"][1]
    picked = directions if draw is ws else None  # another draw holds only those directions
    runs = ablations.variant_runs(draw, {v: variants[v] for v in VARIANTS}, picked, progress)
    # The module ablation's own rows (each names the draw's config and test set).
    table = ablations.table_rows(runs, per_seed=True).assign(draw=seed)
    rows = table[["draw", "train", "dataset", "variant", *METRICS, "note",
                  *PROVENANCE]].to_dict("records")
    for test in table["dataset"].unique():
        ious = box_prompt_ious(draw, test, draw.eval_records(test))
        rows.append({"draw": seed, "train": "", "dataset": test, "variant": SAM_ROW,
                     "sam_median_iou": float(ious["iou"].median()), "note": SAM_NOTE,
                     **provenance_columns(draw.profile,
                                          dataset_index_hash=draw.dataset(test).index_hash)})
    return rows


def spread_table(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Per (train, dataset, variant): mean, sd, min and max over the draws of each metric."""
    table = pd.DataFrame(rows)
    values = [c for c in (*METRICS, "sam_median_iou") if c in table]
    grouped = table.groupby(["train", "dataset", "variant"], sort=False)[values]
    stats = grouped.agg(["mean", "std", "min", "max"]).dropna(axis=1, how="all")
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    stats.insert(0, "draws", grouped.size())
    stats["dataset_index_hash"] = _index_hashes(table, ["train", "dataset", "variant"])
    stats = stats.reset_index()
    notes = [SAM_NOTE if variant == SAM_ROW else "" for variant in stats["variant"]]
    if (stats["draws"] < 2).any():  # the standard deviation of one draw is not defined
        notes = [f"{n}; one draw: no standard deviation".lstrip("; ") if d < 2 else n
                 for n, d in zip(notes, stats["draws"])]
    return stats.assign(note=notes)


def comparison_counts(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Per direction and comparison: on how many draws it holds, and the smallest and
    largest difference (higher variant minus the other)."""
    table = pd.DataFrame([r for r in rows if r["variant"] in VARIANTS])
    out = []
    for (train, test), group in table.groupby(["train", "dataset"], sort=False):
        wide = group.pivot_table(index="draw", columns="variant", values=list(METRICS))
        for label, (metric, higher, lower) in COMPARISONS:
            gap = wide[metric, higher] - wide[metric, lower]
            holds = gap >= 0 if ">=" in label else gap > 0
            out.append({"train": train, "dataset": test, "comparison": label,
                        "draws": len(gap), "holds_on": int(holds.sum()),
                        "gap_min": float(gap.min()), "gap_mean": float(gap.mean()),
                        "gap_max": float(gap.max()),
                        "draws_failing": " ".join(str(d) for d in gap.index[~holds])
                        or "none",
                        "dataset_index_hash": _joined(group["dataset_index_hash"])})
    return pd.DataFrame(out)


def _joined(hashes: pd.Series) -> str:
    """The draws' test-set index hashes, each once, in draw order."""
    return " ".join(dict.fromkeys(hashes))


def _index_hashes(table: pd.DataFrame, keys: list[str]) -> pd.Series:
    """Per group, ``_joined`` over its rows."""
    return table.groupby(keys, sort=False)["dataset_index_hash"].agg(_joined)


def write_spread_tables(ws: Workspace, rows: Sequence[dict[str, Any]]
                        ) -> dict[str, pd.DataFrame]:
    """``draw_rows`` (each draw's rows), ``draw_spread`` (mean, sd and range over the draws)
    and ``draw_comparisons`` under ``results/<profile>/tables/``, with provenance."""
    from clipsam_lib.provenance import provenance_columns
    from clipsam_lib.tables import write_table

    profile = ws.profile
    seeds = sorted({r["draw"] for r in rows})
    # Rows over draws: the profile's provenance, and every draw's test set (from the rows).
    provenance = provenance_columns(profile)
    provenance.pop("dataset_index_hash")
    folder = paths.results_subdir(profile, "tables")
    per_draw = pd.DataFrame(rows)  # each draw's rows carry their own provenance
    spread = spread_table(rows).assign(**provenance)
    counts = comparison_counts(rows).assign(**provenance)
    what = (f"profile {profile.name}; draws {', '.join(map(str, seeds))} of the embedded "
            f"benchmark, draw {profile.synthetic_seed} being the one the other tables use")
    write_table(per_draw, folder / "draw_rows",
                caption=f"The module ablation and SAM's ground-truth-box check on each draw "
                        f"({what}; map metrics x100, SAM's median IoU as a fraction)",
                rendered=_per_draw_shown(per_draw))
    write_table(spread, folder / "draw_spread",
                caption=f"Spread over draws of the embedded benchmark: mean ± standard "
                        f"deviation [min, max] ({what}; map metrics x100, SAM's median IoU "
                        f"as a fraction)",
                rendered=_spread_shown(spread))
    write_table(counts, folder / "draw_comparisons",
                caption=f"On how many draws each comparison of the module ablation holds, "
                        f"and its gap (higher minus lower, points x100: min / mean / max; "
                        f"{what})",
                rendered=_counts_shown(counts))
    return {"draw_rows": per_draw, "draw_spread": spread, "draw_comparisons": counts}


SHOWN = {"pixel_auroc": "P-AUROC", "pixel_pro_linear200": "PRO linear200",
         "pixel_pro_mvtec": "PRO mvtec", "pixel_f1_max": "F1-max", "pixel_ap": "AP",
         "sam_median_iou": "SAM median IoU"}


def _per_draw_shown(table: pd.DataFrame) -> pd.DataFrame:
    shown = table[["draw", "train", "dataset", "variant"]].copy()
    for column, label in SHOWN.items():
        if column == "sam_median_iou":  # 3 decimals: one would round 0.554 up to 0.6
            values = table.get(column, pd.Series(float("nan"), index=table.index))
            shown[label] = ["–" if pd.isna(v) else f"{v:.3f}" for v in values]
        else:
            shown[f"{label} (%)"] = 100 * table[column]
    return shown


def _spread_shown(spread: pd.DataFrame) -> pd.DataFrame:
    """One cell per metric: mean +- sd [min, max], x100 for the map metrics."""
    shown = spread[["train", "dataset", "variant", "draws"]].copy()
    for column, label in SHOWN.items():
        scale, digits = (1, 3) if column == "sam_median_iou" else (100, 1)

        def cell(row, column=column, scale=scale, digits=digits):
            mean = row.get(f"{column}_mean")
            if mean is None or pd.isna(mean):
                return "–"
            sd = row.get(f"{column}_std")
            sd = "" if sd is None or pd.isna(sd) else f" ± {scale * sd:.{digits}f}"
            return (f"{scale * mean:.{digits}f}{sd} [{scale * row[f'{column}_min']:.{digits}f}, "
                    f"{scale * row[f'{column}_max']:.{digits}f}]")

        shown[label] = spread.apply(cell, axis=1)
    return shown


def _counts_shown(counts: pd.DataFrame) -> pd.DataFrame:
    shown = counts[["train", "dataset", "comparison"]].copy()
    shown["holds on"] = [f"{h}/{d}" for h, d in zip(counts["holds_on"], counts["draws"])]
    shown["gap min / mean / max"] = [
        f"{100 * a:+.1f} / {100 * b:+.1f} / {100 * c:+.1f}"
        for a, b, c in zip(counts["gap_min"], counts["gap_mean"], counts["gap_max"])]
    shown["draws where it fails"] = counts["draws_failing"]
    return shown
