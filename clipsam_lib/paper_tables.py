"""The paper's tables: this project's rows beside the published ones.

Published numbers (``configs/published_numbers.csv``, copied from the project's reference
material) carry a status: ``checked`` (read in the cited table) or ``unchecked`` (quoted
from secondary material). Unchecked cells get a dagger. Rows from other papers were
produced under their own protocols; the ``protocol`` column says which.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from clipsam_lib.config import CONFIG_DIR

# Metric columns, named as in the published numbers file; short names for headers.
METRICS = {
    "pixel_auroc": "AUROC",
    "pixel_f1_max": "F1-max",
    "pixel_ap": "AP",
    "pixel_pro": "PRO",
}
# Image-level columns: this run's rows only (the published rows report none), under the
# row's ``eval.image_score``, which the wide table names in its "image score" column.
IMAGE_METRICS = {
    "image_auroc": "I-AUROC",
    "image_ap": "I-AP",
    "image_f1_max": "I-F1-max",
}
# Dataset layout -> the name the published tables use.
PUBLISHED_DATASET = {"mvtec": "MVTec-AD", "visa": "VisA", "mtd": "MTD", "ksdd2": "KSDD2"}
# Protocols of the published rows, as their papers state them.
PUBLISHED_PROTOCOL = {
    "WinCLIP": "WinCLIP's own (240 px)",
    "SAA+": "SAA+'s own (400 px)",
    "APRIL-GAN": "peer (518 px)",
    "AnomalyCLIP": "AnomalyCLIP's (518 px, sigma 4)",
    "ClipSAM": "ClipSAM paper (518 px)",
}
DAGGER = "†"


def load_published(path: str | Path | None = None) -> pd.DataFrame:
    """Published numbers (percent) with source and status."""
    df = pd.read_csv(path or CONFIG_DIR / "published_numbers.csv")
    expected = {"dataset", "method", "metric", "value", "source", "status"}
    missing = expected - set(df.columns)
    if missing:
        raise ValueError(f"published numbers file lacks columns {sorted(missing)}.")
    return df


# Provenance columns our rows carry into the long comparison table.
PROVENANCE = ("profile", "config_hash", "git_commit", "weights", "dataset_index_hash", "device",
              "date")


def _cell(value: float, status: str = "checked") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.1f}" + (DAGGER if status == "unchecked" else "")


def comparison_long(ours: pd.DataFrame, pro_column: str = "pixel_pro_linear200") -> pd.DataFrame:
    """One row per (method, dataset, metric): ours (percent) and the published numbers.

    ``ours`` holds one macro-mean row per evaluated dataset with columns ``dataset``,
    ``layout``, ``label`` (how the method is named in the table), the metric fractions,
    ``protocol`` and the provenance columns. ``pro_column`` picks the PRO variant shown.
    """
    published = load_published()
    rows = []
    layouts = list(dict.fromkeys(ours["layout"]))
    for layout in layouts:
        column_name = PUBLISHED_DATASET.get(layout, layout)
        for record in published[published["dataset"] == column_name].itertuples():
            rows.append({
                "method": record.method, "table_dataset": column_name,
                "evaluated_on": column_name, "metric": record.metric,
                "value": float(record.value), "status": record.status,
                "protocol": PUBLISHED_PROTOCOL.get(record.method, "as published"),
                "source": record.source,
            })
    image_metrics = [m for m in IMAGE_METRICS if m in ours.columns]
    for row in ours.to_dict("records"):
        for metric in [*METRICS, *image_metrics]:
            source_column = pro_column if metric == "pixel_pro" else metric
            rows.append({
                "method": row["label"],
                "table_dataset": PUBLISHED_DATASET.get(row["layout"], row["layout"]),
                "evaluated_on": row["dataset"], "metric": metric,
                "value": 100.0 * float(row[source_column]),  # NaN stays NaN, with its note
                "status": "this run", "protocol": f"{row['protocol']} ({pro_column})",
                "source": f"{row['weights']}; commit {row['git_commit']}",
                "note": row.get("note") if isinstance(row.get("note"), str) else "",
                "image_score": row.get("image_score", "") if metric in IMAGE_METRICS else "",
                "seed": row.get("seed", ""),
                **{k: row[k] for k in PROVENANCE if k in row},
            })
    return pd.DataFrame(rows)


def comparison_wide(long: pd.DataFrame) -> pd.DataFrame:
    """Paper layout: one row per method, a column per (dataset, metric); daggers mark
    unchecked published cells; '–' where a paper reports nothing."""
    datasets = list(dict.fromkeys(long["table_dataset"]))
    methods = list(dict.fromkeys(long["method"]))
    shown = {**METRICS, **{m: s for m, s in IMAGE_METRICS.items() if (long["metric"] == m).any()}}
    table = []
    for method in methods:
        mine = long[long["method"] == method]
        out = {"method": method}
        for dataset in datasets:
            for metric, short in shown.items():
                hit = mine[(mine["table_dataset"] == dataset) & (mine["metric"] == metric)]
                out[f"{dataset} {short}"] = (
                    _cell(hit["value"].iloc[0], hit["status"].iloc[0]) if len(hit) else "–"
                )
        if "image_score" in mine:
            scores = [s for s in dict.fromkeys(mine["image_score"].fillna("")) if s]
            out["image score"] = "; ".join(scores) or "–"
        out["status"] = "; ".join(dict.fromkeys(mine["status"]))
        out["protocol"] = "; ".join(dict.fromkeys(mine["protocol"]))
        table.append(out)
    return pd.DataFrame(table)


def per_category(evaluation: pd.DataFrame) -> pd.DataFrame:
    """Per-class rows plus the macro mean, metrics in percent, both PRO variants, and the
    image-level metrics with the image score they were computed from."""
    columns = ["pixel_auroc", "pixel_f1_max", "pixel_ap", "pixel_pro_linear200",
               "pixel_pro_mvtec", *IMAGE_METRICS]
    present = [c for c in columns if c in evaluation.columns]
    table = evaluation[["dataset", "cls_name", *present]].copy()
    table[present] = 100.0 * table[present]
    if "image_score" in evaluation.columns:
        table["image_score"] = evaluation["image_score"]
    if "note" in evaluation.columns:
        table["note"] = evaluation["note"].fillna("")
    return table.reset_index(drop=True)
