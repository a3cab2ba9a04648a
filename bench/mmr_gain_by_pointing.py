"""Where MMR's gain sits: on the images whose prompts land on a defect, near one, or off?

For each anomalous test image of the smoke profile's committed draw, the average precision
of its pixels (scikit-learn's ``average_precision_score``, defect pixels against the map)
for the rough map (+UMCI, MMR off) and the refined one (+UMCI+MMR), the images grouped by
where MMR's prompt points fall: on a defect pixel, within 15 px of one (``pointing.
TOLERANCE``, as ``mmr_pointing``), or farther. The points come from the rough map, so the
groups are the same for every SAM; each SAM given on the command line (default: the
committed one) adds its rows. Runs and maps go to a scratch results folder.

    .venv/bin/python bench/mmr_gain_by_pointing.py [SAM.safetensors ...]

Measured 2026-12-04 (2 cores; mini CLIP 555e8ce361a8), mean
per-image AP gain in points, first direction (synth_visa -> synth_mvtec) / second:

    SAM                          on (9 / 12)    near (8 / 20)   off (23 / 8)
    committed 0c9801525890       +12.4 / +4.9   +6.4 / +6.0     +0.4 / +2.4
    2,000 steps 1fa06ea42da5     +6.4 / +0.9    +2.7 / +3.2     -0.0 / -0.4
    loose boxes a5b664f69a0e     +10.0 / +7.1   +5.5 / +2.0     +0.0 / +1.1

MMR gains where its prompts land on or near a defect; the longer-trained SAM's smaller
gain is on those very images, not on the misses. Also printed: the side of MMR's boxes
against the defect regions' (median 9 px against 40 / 37 px), and, on the images with a
point on a defect, how much of the defect SAM's fused masks cover (committed 0.34 / 0.33,
2,000 steps 0.25 / 0.23, loose 0.26 / 0.29, part boxes 509524049dc1 0.64 / 0.63) and the
top mask's area over its box's (7.0 / 3.0, 1.7 / 1.3, 3.6 / 2.8, 25.7 / 12.6).
About 1.5 min per SAM.

Also printed: the side of the regions' boxes in the rough map binarized at other relative
thetas (``THETAS``). Measured 2026-12-06 (AMD EPYC, mini CLIP 33ae17852a53, committed SAM;
40 s), over the 40 / 40 anomalous test images, median side in px, first direction /
second, against the defects' 40 / 37:

    theta    0.5        0.1        0.01       0.001
    median   9 / 12     12 / 10    11 / 16    16 / 158 (upper quartile 224 / 258)
    regions  117 / 139  241 / 346  246 / 103  154 / 79

No theta gives boxes of a defect's size: the rough map is a field of small bumps, which
multiply as theta falls and merge into the whole picture before one grows to a defect's
side. (The per-image AP gains with that CLIP: on +4.8 / +6.7, near +2.8 / +12.2, off
-0.1 / +0.8; the defect covered 0.31 / 0.47, top mask / box area 6.3 / 13.5.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _scratch import scratch_results
from sklearn.metrics import average_precision_score

GROUPS = ("on", "near", "off")


def image_group(points, on_region: np.ndarray, near_region: np.ndarray) -> str:
    from clipsam_lib.pointing import prompt_hits

    if prompt_hits(points, on_region).any():
        return "on"
    return "near" if prompt_hits(points, near_region).any() else "off"


def refined_run(ws, direction):
    """(+UMCI+MMR run, its test set's root, eval config) for the direction's first test set."""
    from clipsam_lib import ablations

    full = ablations.run_variant(ws, {}, "+UMCI+MMR", direction)[0]
    return full, ws.dataset(full.test_dataset).root, full.profile.eval


def rough_run(ws, direction):
    """The +UMCI run with MMR off (the rough map) for the direction's first test set."""
    from clipsam_lib import ablations

    return ablations.run_variant(ws, {"mmr.enabled": False}, "+UMCI", direction)[0]


def gains(ws, direction) -> dict[str, list[tuple[float, float]]]:
    """(rough AP, refined AP) per anomalous image, by where its prompts fall."""
    from clipsam_lib.evaluate import ground_truth
    from clipsam_lib.pointing import TOLERANCE, defect_regions

    rough = rough_run(ws, direction)
    full, root, cfg = refined_run(ws, direction)
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


def _side(box: tuple[slice, slice]) -> float:
    rows, cols = box
    return float(np.sqrt((rows.stop - rows.start) * (cols.stop - cols.start)))


def box_sides(ws, direction) -> tuple[np.ndarray, np.ndarray]:
    """Side (square root of the area) of MMR's prompt boxes and of the defect regions'
    own boxes, over the test set's images."""
    from scipy import ndimage

    from clipsam_lib.evaluate import ground_truth

    full, root, cfg = refined_run(ws, direction)
    prompts, defects = [], []
    for rec in full.records:
        for x0, y0, x1, y1 in np.array(full.maps.sidecar(rec)["boxes"]).reshape(-1, 4):
            prompts.append(np.sqrt((x1 - x0 + 1) * (y1 - y0 + 1)))
        labels, _ = ndimage.label(ground_truth(rec, root, cfg))
        defects += [_side(box) for box in ndimage.find_objects(labels)]
    return np.array(prompts), np.array(defects)


# Relative thetas at which the rough map's regions are measured (the smoke profile: 0.5).
THETAS = (0.5, 0.1, 0.01, 1e-3)


def theta_box_sides(ws, direction, thetas=THETAS) -> tuple[int, dict[float, np.ndarray]]:
    """(anomalous test images, side of each region's box in their rough map (+UMCI, MMR
    off) binarized at each relative theta), as MMR would draw its boxes there. Over every
    test image, theta 0.5 gives MMR's own boxes (checked 2026-12-06: 195 / 271, equal)."""
    from scipy import ndimage

    from clipsam_lib.modeling.mmr import binarize, label_regions

    rough = rough_run(ws, direction)
    sides: dict[float, list[float]] = {theta: [] for theta in thetas}
    anomalous = [rec for rec in rough.records if rec.get("mask_path")]
    for rec in anomalous:
        score_map = rough.maps(rec)
        for theta in thetas:
            regions, _ = label_regions(binarize(score_map, theta, "relative"))
            sides[theta] += [_side(box) for box in ndimage.find_objects(regions)]
    return len(anomalous), {theta: np.array(values) for theta, values in sides.items()}


def mask_reach(ws, direction) -> dict[str, float]:
    """On the images with a prompt point on a defect, those prompts decoded again: how much
    of the defect SAM's fused masks (fusion A's M_sam) cover, how much of them is defect,
    and the top mask's area over its prompt box's."""
    from clipsam_lib.data.io import read_image_rgb
    from clipsam_lib.evaluate import ground_truth
    from clipsam_lib.modeling.mmr import Prompts, decode_masks, fuse_a
    from clipsam_lib.pointing import prompt_hits

    full, root, cfg = refined_run(ws, direction)
    sam = ws.sam.get()
    rows = []
    for rec in full.records:
        if not rec.get("mask_path"):
            continue
        defect = ground_truth(rec, root, cfg).astype(bool)
        sidecar = full.maps.sidecar(rec)
        hits = prompt_hits(sidecar["points"], defect)
        if not defect.any() or not hits.any():
            continue
        points = np.array(sidecar["points"], np.float32).reshape(-1, 2)[hits]
        boxes = np.array(sidecar["boxes"], np.float32).reshape(-1, 4)[hits]
        prompts = Prompts(points, boxes, np.ones(len(points), np.int64), mode="point+box")
        masks, scores = decode_masks(sam.model, sam.embed(read_image_rgb(root / rec["img_path"])),
                                     prompts)
        # Fusion A with the rough map left out (lambda 1) is its M_sam.
        m_sam = fuse_a(np.zeros(defect.shape, np.float32), masks, scores, lam=1.0)
        box_area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
        rows.append(((m_sam * defect).sum() / defect.sum(),
                     (m_sam * defect).sum() / max(m_sam.sum(), 1e-9),
                     float(np.mean(masks[:, 0].sum((1, 2)) / box_area))))
    reach = np.array(rows).reshape(-1, 3)
    return {"images": len(reach), "defect covered": reach[:, 0].mean(),
            "mask on defect": reach[:, 1].mean(), "top mask / box area": reach[:, 2].mean()}


def _run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sams", nargs="*", type=Path, help="SAM weights (default: committed)")
    args = parser.parse_args()
    from clipsam_lib.config import load_profile
    from clipsam_lib.workspace import Workspace

    for number, sam in enumerate(args.sams or [None]):
        overrides = {"sam.checkpoint": str(sam.resolve())} if sam else {}
        ws = Workspace(load_profile("smoke", **overrides))
        if number == 0:  # the prompts come from the rough map: the same for every SAM
            for direction in ws.profile.directions:
                prompts, defects = box_sides(ws, direction)
                print(f"{direction.train} -> {direction.test[0]}: side of MMR's boxes "
                      f"(every test image) "
                      f"(quartiles, px) {np.percentile(prompts, [25, 50, 75]).round(1)}, "
                      f"of the defect regions' {np.percentile(defects, [25, 50, 75]).round(1)}")
                images, by_theta = theta_box_sides(ws, direction)
                for theta, sides in by_theta.items():
                    print(f"  rough map of the {images} anomalous images at relative theta "
                          f"{theta:g}: {len(sides)} regions, "
                          f"box side (quartiles, px) {np.percentile(sides, [25, 50, 75]).round(1)}")
        print(f"SAM: {sam or 'committed'}")
        for direction in ws.profile.directions:
            for group, pairs in gains(ws, direction).items():
                ap = 100 * np.array(pairs).reshape(-1, 2)
                print(f"  {direction.train} -> {direction.test[0]}  prompt {group:4s}  "
                      f"images {len(ap):2d}  AP rough {ap[:, 0].mean():5.1f}  "
                      f"MMR {ap[:, 1].mean():5.1f}  gain {(ap[:, 1] - ap[:, 0]).mean():+5.1f}")
            reach = mask_reach(ws, direction)
            print("  " + "  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                   for k, v in reach.items()))


def main() -> None:
    with scratch_results("clipsam-pointing-"):
        _run()


if __name__ == "__main__":
    main()
