"""Where MMR's gain sits: on the images whose prompts land on a defect, near one, or off?

For each anomalous test image of the smoke profile's committed draw, the average precision
of its pixels (scikit-learn's ``average_precision_score``, defect pixels against the map)
for the rough map (+UMCI, MMR off) and the refined one (+UMCI+MMR), the images grouped by
where MMR's prompt points fall: on a defect pixel, within 15 px of one (``pointing.
TOLERANCE``, as ``mmr_pointing``), or farther. The points come from the rough map, so the
groups are the same for every SAM; each SAM given on the command line (default: the
committed one) adds its rows. Runs and maps go to a scratch results folder.

    .venv/bin/python bench/mmr_gain_by_pointing.py [SAM.safetensors ...]

Measured 2026-12-04 (2 cores, about 1 min for three SAMs; mini CLIP 555e8ce361a8), mean
per-image AP gain in points, first direction (synth_visa -> synth_mvtec) / second:

    SAM                          on (9 / 12)    near (8 / 20)   off (23 / 8)
    committed 0c9801525890       +12.4 / +4.9   +6.4 / +6.0     +0.4 / +2.4
    2,000 steps 1fa06ea42da5     +6.4 / +0.9    +2.7 / +3.2     -0.0 / -0.4
    loose boxes a5b664f69a0e     +10.0 / +7.1   +5.5 / +2.0     +0.0 / +1.1

MMR gains where its prompts land on or near a defect; the longer-trained SAM's smaller
gain is on those very images, not on the misses.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score

GROUPS = ("on", "near", "off")


def image_group(points, on_region: np.ndarray, near_region: np.ndarray) -> str:
    from clipsam_lib.pointing import prompt_hits

    if prompt_hits(points, on_region).any():
        return "on"
    return "near" if prompt_hits(points, near_region).any() else "off"


def gains(ws, direction) -> dict[str, list[tuple[float, float]]]:
    """(rough AP, refined AP) per anomalous image, by where its prompts fall."""
    from clipsam_lib import ablations
    from clipsam_lib.evaluate import ground_truth
    from clipsam_lib.pointing import TOLERANCE, defect_regions

    rough = ablations.run_variant(ws, {"mmr.enabled": False}, "+UMCI", direction)[0]
    full = ablations.run_variant(ws, {}, "+UMCI+MMR", direction)[0]
    root, cfg = ws.dataset(full.test_dataset).root, full.profile.eval
    near = defect_regions(full.records, root, cfg, TOLERANCE)
    on = defect_regions(full.records, root, cfg, 0)
    groups: dict[str, list[tuple[float, float]]] = {g: [] for g in GROUPS}
    for rec in full.records:
        if rec["img_path"] not in near:
            continue
        mask = ground_truth(rec, root, cfg).ravel()
        group = image_group(full.maps.sidecar(rec)["points"], on[rec["img_path"]],
                            near[rec["img_path"]])
        groups[group].append((average_precision_score(mask, rough.maps(rec).ravel()),
                              average_precision_score(mask, full.maps(rec).ravel())))
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sams", nargs="*", type=Path, help="SAM weights (default: committed)")
    args = parser.parse_args()
    os.environ.setdefault("CLIPSAM_RESULTS_DIR", tempfile.mkdtemp(prefix="clipsam-pointing-"))
    from clipsam_lib.config import load_profile
    from clipsam_lib.workspace import Workspace

    for sam in args.sams or [None]:
        overrides = {"sam.checkpoint": str(sam.resolve())} if sam else {}
        ws = Workspace(load_profile("smoke", **overrides))
        print(f"SAM: {sam or 'committed'}")
        for direction in ws.profile.directions:
            for group, pairs in gains(ws, direction).items():
                ap = 100 * np.array(pairs).reshape(-1, 2)
                print(f"  {direction.train} -> {direction.test[0]}  prompt {group:4s}  "
                      f"images {len(ap):2d}  AP rough {ap[:, 0].mean():5.1f}  "
                      f"MMR {ap[:, 1].mean():5.1f}  gain {(ap[:, 1] - ap[:, 0]).mean():+5.1f}")


if __name__ == "__main__":
    main()
