"""The paper's ablation claims, checked against this run's ablation tables.

ClipSAM's ablations make claims of one kind: a configuration the paper (or its first
author) chose is better than the ones it was compared with. ``CLAIMS`` lists them as data;
``claims_table`` reads them off the ablation tables a run wrote (no map is computed
again) and says, per direction and pixel metric, whether the run agrees. Notebook 02
shows the table, so its text never has to restate numbers that change with the weights,
the draw of the benchmark or the machine; on the ``paper`` profile the same table says
where a reproduction agrees with the paper.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from clipsam_lib.provenance import COLUMNS as PROVENANCE  # taken from the claimed row

# The official PRO: the claims compare maps of one kind, and APRIL-GAN's 200 linear
# thresholds cannot rank a fused map's pixels outside SAM's masks (notebook 02).
METRICS = {"pixel_auroc": "P-AUROC", "pixel_f1_max": "F1-max", "pixel_ap": "AP",
           "pixel_pro_mvtec": "PRO"}
# Gaps under 0.1 point (x100) are ties: the Markdown shows one decimal, and such gaps
# come and go with the CPU that trained UMCI (README).
TIE = 0.001


@dataclass(frozen=True)
class Claim:
    """``better`` is at or above ``worse`` on each metric of ``METRICS`` in ``table``."""

    table: str
    better: str
    worse: str
    # paper: the paper's ablation; author: the first author's stated setting; default: the
    # project's choice where the paper gives none (docs/switches.md)
    source: str


CLAIMS = (
    Claim("ablation_modules", "+UMCI", "CLIP baseline", "paper"),
    Claim("ablation_modules", "+UMCI+MMR", "+UMCI", "paper"),
    Claim("ablation_modules", "+UMCI+MMR", "CLIP baseline", "paper"),
    Claim("ablation_umci_paths", "strip + scale", "strip only", "author"),
    Claim("ablation_umci_paths", "strip + scale", "scale only", "author"),
    Claim("ablation_prompts", "point+box", "point", "author"),
    Claim("ablation_prompts", "point+box", "box", "author"),
    Claim("ablation_mask_levels", "3 levels", "1 level", "author"),
    Claim("ablation_mask_levels", "3 levels", "2 levels", "author"),
)


def _row(table: pd.DataFrame, variant: str, train: str, dataset: str) -> pd.Series:
    rows = table[(table["variant"] == variant) & (table["train"] == train)
                 & (table["dataset"] == dataset)]
    if len(rows) != 1:
        raise ValueError(f"the ablation table has {len(rows)} rows for {variant!r} trained "
                         f"on {train} and tested on {dataset}; rerun that table's cell")
    return rows.iloc[0]


def sweep_default_claims(profile) -> tuple[Claim, ...]:
    """Notebook 03's sweeps: the profile's value of each swept setting against the others.

    A sweep's default row is the one whose overrides leave the profile as it is."""
    from clipsam_lib.hyperparameters import sweeps

    found = []
    for name, (_, variants) in sweeps(profile).items():
        defaults = [label for label, overrides in variants.items()
                    if profile.replace(**overrides).hash() == profile.hash()]
        for default in defaults:
            found += [Claim(name, default, label, "default") for label in variants
                      if label != default]
    return tuple(found)


def claims_table(tables: Mapping[str, pd.DataFrame],
                 claims: tuple[Claim, ...] = CLAIMS) -> pd.DataFrame:
    """One row per claim, direction and metric: both values, the gap, whether it holds.

    Claims whose table is not in ``tables`` are left out (a notebook run with some
    tables skipped); a table without a claimed variant raises.
    """
    rows = []
    for claim in claims:
        if claim.table not in tables:
            continue
        table = tables[claim.table]
        for (train, dataset), _ in table.groupby(["train", "dataset"], sort=False):
            better = _row(table, claim.better, train, dataset)
            worse = _row(table, claim.worse, train, dataset)
            for metric in METRICS:
                gap = float(better[metric]) - float(worse[metric])
                rows.append({
                    "claim": f"{claim.better} >= {claim.worse}", "source": claim.source,
                    "table": claim.table, "train": train, "dataset": dataset,
                    "metric": metric, "better": float(better[metric]),
                    "worse": float(worse[metric]), "gap": gap, "holds": gap > -TIE,
                    **{key: better[key] for key in PROVENANCE if key in better},
                })
    return pd.DataFrame(rows)


def shown_table(claims: pd.DataFrame) -> pd.DataFrame:
    """One line per claim and direction, each metric as 'better vs worse' (x100)."""
    lines = []
    for (claim, source, train, dataset), group in claims.groupby(
            ["claim", "source", "train", "dataset"], sort=False):
        line = {"claim": claim, "source": source, "train": train, "dataset": dataset}
        for metric, label in METRICS.items():
            row = group[group["metric"] == metric].iloc[0]
            mark = " ✗" if not row["holds"] else (" ≈" if abs(row["gap"]) < TIE else "")
            line[label] = f"{100 * row['better']:.1f} vs {100 * row['worse']:.1f}{mark}"
        line["holds"] = f"{int(group['holds'].sum())}/{len(group)}"
        lines.append(line)
    return pd.DataFrame(lines)


def write_claims_table(profile, tables: Mapping[str, pd.DataFrame],
                       name: str = "paper_claims", claims: tuple[Claim, ...] = CLAIMS,
                       title: str = "The paper's ablation claims") -> pd.DataFrame:
    """``claims_table``, written as ``results/<profile>/tables/<name>``."""
    from clipsam_lib import paths
    from clipsam_lib.tables import write_table

    claims = claims_table(tables, claims)
    caption = (f"{title} on this run (profile {profile.name}; x100, "
               f"'better vs worse'; ✗: the claimed order fails by {100 * TIE:.1f} point or "
               f"more, ≈: a smaller gap either way; source: paper = its ablation, author = "
               f"the first author's stated setting, default = the project's choice)")
    write_table(claims, paths.results_subdir(profile, "tables") / name, caption=caption,
                rendered=shown_table(claims))
    return claims
