"""How well a mini SAM follows a region's own box, on pictures it was not trained on.

The SAM recipe (``mini.recipes.SamRecipe``) is chosen on held-out corpus pictures, never on
the benchmark: corpus sources and textures drawn afresh from a seed stream of their own
("sam-heldout-eval"), one procedural defect each, the four defect types in turn. For each
defect region (connected component, >= 16 px) SAM gets the region's inclusive box, and the
top-scoring of its three masks is compared with the region (IoU). ``--benchmark`` adds the
embedded benchmark's test sets (what ``sam_check.box_iou_table`` reports), for reading,
not for choosing.

    .venv/bin/python bench/mini_sam_heldout.py [WEIGHTS.safetensors] [--benchmark]

Measured on 2 cores, 2026-12-04 (median IoU, held-out / synth_mvtec / synth_visa):
recipe 0c9801525890 0.589 / 0.499 / 0.554; 1fa06ea42da5 0.700 / 0.599 / 0.657.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from segment_anything.utils.transforms import ResizeLongestSide

from clipsam_lib.data import synthetic
from clipsam_lib.mini import corpus
from clipsam_lib.mini.recipes import SAM_FILE, WEIGHTS_FOLDER
from clipsam_lib.modeling.sam_backbone import build_sam_mini
from clipsam_lib.sam_check import mask_iou, region_boxes

HELDOUT_PICTURES = 160


def load_sam(path: Path):
    sam = build_sam_mini(checkpoint=None)
    sam.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()}, strict=True)
    return sam.eval()


@torch.no_grad()
def top_mask_ious(sam, image: np.ndarray, mask: np.ndarray) -> list[tuple[int, float]]:
    """(area, IoU of the top-scoring mask) per region of ``mask``, each prompted by its box."""
    regions = region_boxes(mask)
    if not regions:
        return []
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    resized = transform.apply_image(image)
    pixels = sam.preprocess(torch.from_numpy(resized).permute(2, 0, 1).float())[None]
    embedding = sam.image_encoder(pixels)
    boxes = torch.tensor(transform.apply_boxes(np.stack([b for _, b in regions]), mask.shape))
    sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
    low_res, scores = sam.mask_decoder(
        image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True)
    masks = (sam.postprocess_masks(low_res, resized.shape[:2], mask.shape) > 0).numpy()
    top = scores.argmax(1).numpy()
    return [(int(region.sum()), mask_iou(region, masks[i, top[i]]))
            for i, (region, _) in enumerate(regions)]


def heldout_rows(sam) -> list[dict]:
    names = corpus.class_names()
    rows = []
    for i in range(HELDOUT_PICTURES):
        rng = synthetic._rng(0, "sam-heldout-eval", i)
        name = names[int(rng.integers(len(names)))]
        hw = (int(rng.integers(180, 321)), int(rng.integers(180, 321)))
        picture, kind = corpus._base(name, hw, rng)
        defect = corpus.DEFECT_TYPES[i % len(corpus.DEFECT_TYPES)]
        picture, mask = synthetic.DEFECTS[defect](picture.copy(), kind, rng)
        for area, iou in top_mask_ious(sam, corpus._as_rgb(picture), mask):
            rows.append({"set": "held-out corpus", "defect": defect, "area": area, "iou": iou})
    return rows


def benchmark_rows(sam) -> list[dict]:
    from clipsam_lib.config import load_profile
    from clipsam_lib.data.io import read_image_rgb
    from clipsam_lib.evaluate import ground_truth
    from clipsam_lib.workspace import Workspace

    ws = Workspace(load_profile("smoke"))
    rows = []
    for dataset in dict.fromkeys(t for d in ws.profile.directions for t in d.test):
        handle = ws.dataset(dataset)
        for rec in (r for r in handle.records() if r.get("mask_path")):
            mask = ground_truth(rec, handle.root, ws.profile.eval)
            image = read_image_rgb(handle.root / rec["img_path"])
            for area, iou in top_mask_ious(sam, image, mask):
                rows.append({"set": dataset, "defect": rec.get("specie_name") or "(unnamed)",
                             "area": area, "iou": iou})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="?", default=str(WEIGHTS_FOLDER / SAM_FILE))
    parser.add_argument("--benchmark", action="store_true",
                        help="also the embedded benchmark's test sets (for reading only)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    sam = load_sam(Path(args.weights))
    rows = heldout_rows(sam) + (benchmark_rows(sam) if args.benchmark else [])
    table = pd.DataFrame(rows)
    print(f"weights: {args.weights}")
    print(table.groupby("set", sort=False)["iou"].agg(["count", "median", "mean"]).round(3))
    print(table.groupby(["set", "defect"], sort=False)["iou"].agg(["count", "median"])
          .round(3))
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
