"""Where the maps and MMR's prompts point: the pointing game on anomalous test images.

Pixel AUROC ranks all pixels of all images; it can be well above chance while a map's
strongest response in an image lies off the defect. MMR prompts SAM at each region's peak
of the rough map, so whether that peak is on a defect decides whether SAM can help. Two
measures, per anomalous test image, with a tolerance of ``tolerance`` pixels around the
defect (the pointing game of Zhang et al., "Top-down neural attention by excitation
backprop", ECCV 2016, which counts a hit within 15 px):

- **map hit**: is the map's maximum on the (tolerant) defect? With ties, the share of the
  maximal pixels that are (so a flat map scores its chance, not 1);
- **prompt hits** (MMR variants, from the maps' sidecars): the share of MMR's prompt points
  on the defect, and whether at least one is.

``chance`` is what a uniformly random pixel scores: the tolerant defect's share of the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from clipsam_lib.config import EvalConfig
from clipsam_lib.evaluate import ground_truth
from clipsam_lib.workspace import Workspace

TOLERANCE = 15  # pixels at the original size (the pointing game's)


def tolerant_region(mask: np.ndarray, tolerance: int) -> np.ndarray:
    """Pixels within ``tolerance`` (Euclidean, in pixels) of a defect pixel."""
    if tolerance <= 0:
        return mask.astype(bool)
    return ndimage.distance_transform_edt(~mask.astype(bool)) <= tolerance


def map_hit(score_map: np.ndarray, region: np.ndarray) -> float:
    """Share of the map's maximal pixels inside ``region`` (1 or 0 when the peak is unique)."""
    peak = score_map == score_map.max()
    return float(region[peak].mean())


def prompt_hits(points: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Per (x, y) prompt point, whether it lies in ``region``."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    cols = np.clip(np.round(points[:, 0]).astype(int), 0, region.shape[1] - 1)
    rows = np.clip(np.round(points[:, 1]).astype(int), 0, region.shape[0] - 1)
    return region[rows, cols]


def defect_regions(records: Sequence[dict[str, Any]], root: Path, eval_cfg: EvalConfig,
                   tolerance: int = TOLERANCE) -> dict[str, np.ndarray]:
    """``img_path`` -> tolerant defect region, for each test image with a defect."""
    regions = {}
    for rec in records:
        if rec.get("mask_path"):
            mask = ground_truth(rec, root, eval_cfg)
            if mask.any():
                regions[rec["img_path"]] = tolerant_region(mask, tolerance)
    return regions


def pointing_row(run: Any, regions: dict[str, np.ndarray]) -> dict[str, Any]:
    """The measures for one ``ablations.VariantRun`` over the images of ``regions``
    (``defect_regions`` of its test set)."""
    mmr_on = run.profile.mmr.enabled
    hits, chance, prompts, on_defect, any_on_defect = [], [], [], [], []
    for rec in run.records:
        region = regions.get(rec["img_path"])
        if region is None:
            continue
        score_map = run.maps(rec)
        if score_map.shape != region.shape:
            raise ValueError(
                f"The map of {rec['img_path']} is {score_map.shape}, its mask {region.shape}: "
                f"maps are stored at the image's size; delete {run.maps.dir} and rerun."
            )
        hits.append(map_hit(score_map, region))
        chance.append(float(region.mean()))
        if mmr_on:
            inside = prompt_hits(run.maps.sidecar(rec)["points"], region)
            prompts.append(len(inside))
            on_defect.extend(inside.tolist())
            any_on_defect.append(bool(inside.any()))
    notes = [] if hits else ["no anomalous test image"]
    row = {"variant": run.label, "train": run.train_dataset, "dataset": run.test_dataset,
           "anomalous_images": len(hits), "map_hit": _mean(hits), "chance": _mean(chance)}
    if mmr_on:
        row.update({"prompts_per_image": _mean(prompts, 0.0),
                    "prompts_on_defect": _mean(on_defect, 0.0),
                    "images_with_a_prompt_on_defect": _mean(any_on_defect, 0.0)})
    else:
        notes.append("MMR off: no prompts")
    return {**row, "note": "; ".join(notes)}


def _mean(values: list, empty: float = float("nan")) -> float:
    return float(np.mean(values)) if values else empty


def pointing_table(ws: Workspace, runs: Sequence[Any], tolerance: int = TOLERANCE
                   ) -> pd.DataFrame:
    """One row per run (see ``pointing_row``), with its provenance; shares are fractions
    in [0, 1]. Each test set's masks are read once for all runs that binarize them alike."""
    from clipsam_lib.provenance import provenance_columns

    regions: dict[tuple, dict[str, np.ndarray]] = {}
    rows = []
    for run in runs:
        cfg = run.profile.eval
        key = (run.test_dataset, cfg.mask_threshold, cfg.mask_binarization)
        if key not in regions:
            regions[key] = defect_regions(run.records, ws.dataset(run.test_dataset).root,
                                          cfg, tolerance)
        rows.append({**pointing_row(run, regions[key]),
                     "tolerance_px": tolerance,
                     **provenance_columns(run.profile, protocol=run.profile.eval.protocol,
                                          dataset_index_hash=run.index_hash,
                                          config_hash=run.profile.hash())})
    return pd.DataFrame(rows)


PERCENT_COLUMNS = {
    "map_hit": "map max on defect (%)",
    "chance": "chance (%)",
    "prompts_on_defect": "MMR prompts on defect (%)",
    "images_with_a_prompt_on_defect": "images with a prompt on defect (%)",
}


def write_pointing_table(ws: Workspace, runs: Sequence[Any], name: str = "mmr_pointing",
                         tolerance: int = TOLERANCE) -> pd.DataFrame:
    """``pointing_table``, written as ``results/<profile>/tables/<name>``."""
    from clipsam_lib import paths
    from clipsam_lib.tables import write_table

    table = pointing_table(ws, runs, tolerance)
    for column, label in PERCENT_COLUMNS.items():
        if column in table:
            table[label] = 100.0 * table[column]
    shown = ["variant", "train", "dataset", "anomalous_images",
             *[label for column, label in PERCENT_COLUMNS.items() if column in table],
             *(["prompts_per_image"] if "prompts_per_image" in table else [])]
    caption = (f"Pointing game on the anomalous test images (profile {ws.profile.name}): "
               f"is each map's maximum, and each of MMR's prompt points, within "
               f"{tolerance} px of a defect; chance = a random pixel")
    write_table(table, paths.results_subdir(ws.profile, "tables") / name, caption=caption,
                display_columns=shown)
    return table
