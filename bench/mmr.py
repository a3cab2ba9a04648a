"""Benchmark: MMR on a cached SAM embedding vs SAM's image encoder, same run, same machine.

Target (issue 5): with the embedding cached, MMR for an image with 8 regions (prompt
extraction + decoder + fusion) costs <= 5% of the image-encoder time of SAM ViT-H for that
image. Weights are random (no checkpoint here); the cost of a forward does not depend on
them. Also prints the decoder alone, batched (one call for all prompts) vs per prompt.

    .venv/bin/python bench/mmr.py                    # vit_h, 1024x1024, 8 regions
    .venv/bin/python bench/mmr.py --model-type vit_b --reps 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from clipsam_lib.config import MMRConfig, SamConfig
from clipsam_lib.modeling import mmr
from clipsam_lib.modeling.sam_backbone import SamBackbone


def interleaved(candidates: dict[str, Callable[[], object]], reps: int) -> dict[str, list[float]]:
    """Wall times of each candidate, run in turn ``reps`` times after one warm-up each.

    Interleaving puts the candidates under the same load from other processes on shared
    cores; the minimum is the least disturbed run.
    """
    for fn in candidates.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(reps):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def rough_map_with_regions(size: int, regions: int, seed: int = 0) -> np.ndarray:
    """A rough map (CLIP resolution) with ``regions`` separate Gaussian blobs above 0.5."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    score = rng.uniform(0.0, 0.3, size=(size, size))
    cols = int(np.ceil(np.sqrt(regions)))
    for k in range(regions):
        cy, cx = (k // cols + 0.5) / cols, (k % cols + 0.5) / cols
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.25 / cols) ** 2))
        score = np.maximum(score, 0.95 * blob)
    return score.astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="vit_h")
    parser.add_argument("--image-size", type=int, default=1024, help="original image side")
    parser.add_argument("--map-size", type=int, default=518, help="rough map side (CLIP S)")
    parser.add_argument("--regions", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5, help="timed MMR repetitions")
    parser.add_argument("--encoder-reps", type=int, default=1)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress shows when redirected to a file

    torch.manual_seed(0)
    cfg = SamConfig(model_type=args.model_type, checkpoint=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random init is the point here
        start = time.perf_counter()
        backbone = SamBackbone(cfg, device="cpu")
    print(f"SAM {args.model_type} (random init) built in {time.perf_counter() - start:.1f} s; "
          f"{torch.get_num_threads()} torch threads")

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(args.image_size, args.image_size, 3), dtype=np.uint8)
    encoder_times = []
    for _ in range(args.encoder_reps):
        start = time.perf_counter()
        embedding = backbone.embed(image)
        encoder_times.append(time.perf_counter() - start)
    encoder_s = min(encoder_times)
    print(f"image encoder (SamPredictor.set_image, {args.image_size}^2): {encoder_s:.2f} s")

    rough = rough_map_with_regions(args.map_size, args.regions)
    cfg_mmr = MMRConfig()
    clip_map = mmr.resize_map(rough, embedding.original_size)
    _, prompts = mmr.extract_prompts(clip_map, cfg_mmr)
    if len(prompts) != args.regions:
        raise SystemExit(f"expected {args.regions} regions, found {len(prompts)}")
    sam = backbone.model

    masks, scores = mmr.decode_masks(sam, embedding, prompts, "batched")
    candidates = {
        "prompt extraction": lambda: mmr.extract_prompts(
            mmr.resize_map(rough, embedding.original_size), cfg_mmr),
        "decoder batched": lambda: mmr.decode_masks(sam, embedding, prompts, "batched"),
        "decoder per_prompt": lambda: mmr.decode_masks(sam, embedding, prompts, "per_prompt"),
        "fusion A": lambda: mmr.fuse(clip_map, masks, scores, cfg_mmr),
        "MMR total, batched": lambda: mmr.refine(
            sam, embedding, rough, MMRConfig(decoder_batching="batched")),
        "MMR total, per_prompt": lambda: mmr.refine(
            sam, embedding, rough, MMRConfig(decoder_batching="per_prompt")),
    }
    times = interleaved(candidates, args.reps)
    auto = mmr.resolve_batching("auto", sam.device)
    best = {name: min(ts) for name, ts in times.items()}

    print(f"\n{args.regions} regions, {args.map_size}^2 rough map -> {args.image_size}^2, "
          f"{args.reps} interleaved runs (min / median):")
    for name, ts in times.items():
        print(f"  {name:<24s} {min(ts) * 1000:8.1f} / {statistics.median(ts) * 1000:8.1f} ms"
              f"   min = {100 * min(ts) / encoder_s:5.2f}% of encoder")
    print(f"\ndecoder batched / per-prompt (min): "
          f"{best['decoder batched'] / best['decoder per_prompt']:.2f}; "
          f"mmr.decoder_batching=auto on {sam.device.type} -> {auto}")
    ratio = best[f"MMR total, {auto}"] / encoder_s
    print(f"MMR ({auto}) / image encoder: {100 * ratio:.2f}%  (target <= 5%): "
          f"{'PASS' if ratio <= 0.05 else 'FAIL'}")


if __name__ == "__main__":
    main()
