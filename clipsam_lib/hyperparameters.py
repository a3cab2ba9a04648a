"""Notebook 03: the hyper-parameter tables (hidden dimension, scale kernels, theta).

Each sweep is a set of variants (profile overrides) run through ``ablations.run_variant``:
the backbone features come from the caches, UMCI is trained once per distinct setting
(the threshold sweep shares one trained UMCI), and SAM's decoder runs per variant. The
CSV keeps one row per (variant, test dataset) with provenance; the Markdown/LaTeX
renderings use the paper's layout: one row per value, a column group per dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from clipsam_lib.ablations import provenance_note, table_rows, variant_runs, write_rows
from clipsam_lib.config import ProfileConfig
from clipsam_lib.workspace import Workspace, as_workspace

SHORT = {"pixel_auroc": "AUROC", "pixel_f1_max": "F1-max", "pixel_ap": "AP",
         "pixel_pro_linear200": "PRO-l200", "pixel_pro_mvtec": "PRO-mvtec"}


def sweeps(profile: ProfileConfig) -> dict[str, tuple[str, dict[str, dict[str, Any]]]]:
    """name -> (caption, {row label: overrides}) from the profile's sweep lists."""
    return {
        "hp_hidden_dim": (
            "UMCI hidden dimension d",
            {f"d = {d}": {"umci.hidden_dim": d} for d in profile.sweep_hidden_dims},
        ),
        "hp_kernels": (
            "Scale-path kernels (k1, k2)",
            {f"k = ({a}, {b})": {"umci.kernels": (a, b)} for a, b in profile.sweep_kernels},
        ),
        "hp_threshold": (
            "MMR binarization threshold theta"
            + (" (relative: M_c > theta x max M_c per image)"
               if profile.mmr.threshold_mode == "relative" else ""),
            {f"theta = {t}": {"mmr.threshold": t} for t in profile.sweep_thresholds},
        ),
    }


def paper_layout(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per variant; columns '<dataset> <metric>' in percent (NaN kept)."""
    table = []
    for variant, group in rows.groupby("variant", sort=False):
        out: dict[str, Any] = {"variant": variant}
        for row in group.itertuples():
            for metric, short in SHORT.items():
                out[f"{row.dataset} {short}"] = 100.0 * float(getattr(row, metric))
        table.append(out)
    return pd.DataFrame(table)


def sweep_table(
    workspace: Workspace | ProfileConfig,
    name: str,
    directions: Sequence[int | str] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Run one sweep and write ``results/<profile>/tables/<name>.{csv,md,tex}``."""
    ws = as_workspace(workspace)
    profile = ws.profile
    caption, variants = sweeps(profile)[name]
    runs = variant_runs(ws, variants, directions, progress)
    return write_rows(
        profile, runs, name, rendered=paper_layout(table_rows(runs)),
        caption=f"{caption}: pixel metrics in % per test dataset ({profile.name} profile, "
                f"{profile.eval.protocol} protocol; {provenance_note(profile)})",
    )
