"""Benchmark: this project's pixel metrics against one argsort, scikit-learn and the peers' loop.

Times one synthetic class (default 160 images at 518 x 518, ~30% normal images, smooth
maps, anomalous regions from a few pixels to tens of thousands) for:

- ``np.argsort`` of the pooled scores (the unit the targets are stated in);
- ``segmentation_metrics(..., pro_variant="both")``: AUROC, AP, F1-max, PRO linear200 and
  PRO mvtec in one call;
- scikit-learn's ``roc_auc_score``, ``average_precision_score``, ``precision_recall_curve``;
- the peers' linear200 loop (200 thresholds, masks re-labelled with skimage at every
  threshold), timed on an evenly spread subset of thresholds and extrapolated linearly;
- peak extra memory of ``segmentation_metrics`` (tracemalloc: numpy reports its buffers).

It also checks values: the three ranking metrics against scikit-learn on the full class,
and linear200 against the full peers' loop on a smaller class (``--check-images``).
Ratios are measured within one run (the machine is shared; absolute times are noisy).

    python bench/metrics.py [--images 160] [--size 518] [--peer-thresholds 10]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
from scipy import ndimage
from skimage import measure
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from clipsam_lib.metrics import segmentation_metrics


def synthetic_class(
    n_images: int, size: int, seed: int = 0, max_radius: float = 0.25
) -> tuple[np.ndarray, np.ndarray]:
    """Masks (bool) and float32 maps with realistic structure.

    Maps: smooth background noise (low-resolution noise upsampled) plus a blurred bump of
    random strength on each anomalous region, so detection is good but not perfect.
    Region radii are log-uniform from 2 px to ``max_radius * size``.
    """
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_images, size, size), dtype=bool)
    maps = np.empty((n_images, size, size), dtype=np.float32)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n_images):
        if rng.random() >= 0.3:  # ~70% anomalous images, 1-3 regions each
            for _ in range(rng.integers(1, 4)):
                cy, cx = rng.integers(0, size, 2)
                ry, rx = np.exp(rng.uniform(np.log(2), np.log(max_radius * size), 2))
                masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        coarse = rng.normal(size=(size // 16 + 1, size // 16 + 1))
        background = ndimage.zoom(coarse, size / coarse.shape[0], order=3)[:size, :size]
        bump = ndimage.gaussian_filter(masks[i].astype(np.float32), sigma=4)
        maps[i] = 0.3 * background + rng.uniform(0.5, 2.0) * bump
    return masks, maps


# --------------------------------------------------------------------------- peers' loop


def peer_linear200(masks, maps, thresholds_subset=None, max_step=200, expect_fpr=0.3):
    """linear200 the way the peers compute it: re-label every mask at every threshold.

    With ``thresholds_subset`` (indices), only those thresholds are visited (for timing);
    the returned PRO is then meaningless and None.
    """
    min_th, max_th = maps.min(), maps.max()
    delta = (max_th - min_th) / max_step
    thresholds = np.arange(min_th, max_th, delta)
    if thresholds_subset is not None:
        thresholds = thresholds[thresholds_subset]
    binary = np.zeros_like(maps, dtype=bool)
    pros, fprs = [], []
    for th in thresholds:
        binary[maps <= th], binary[maps > th] = 0, 1
        overlaps = []
        for binary_map, mask in zip(binary, masks):
            for region in measure.regionprops(measure.label(mask)):
                hit = binary_map[region.coords[:, 0], region.coords[:, 1]].sum()
                overlaps.append(hit / region.area)
        inverse = 1 - masks
        fprs.append(np.logical_and(inverse, binary).sum() / inverse.sum())
        pros.append(np.array(overlaps).mean())
    if thresholds_subset is not None:
        return None, len(thresholds)
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < expect_fpr
    fprs = fprs[keep]
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return float(auc(fprs, pros[keep])), len(thresholds)


# --------------------------------------------------------------------------- timing helpers


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def peak_extra_bytes(fn) -> int:
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - base


def sklearn_three(labels, scores) -> dict[str, float]:
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return {
        "auroc": roc_auc_score(labels, scores),
        "ap": average_precision_score(labels, scores),
        "f1_max": float(np.max(f1[np.isfinite(f1)])),
    }


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--peer-thresholds", type=int, default=10,
        help="thresholds of the peers' loop actually timed (evenly spread; 200 = all)",
    )
    parser.add_argument(
        "--check-images", type=int, default=16,
        help="class size for the full-loop linear200 value check (0 = skip)",
    )
    parser.add_argument(
        "--max-radius", type=float, default=0.25,
        help="largest region radius as a fraction of the side (more = more anomalous pixels)",
    )
    parser.add_argument("--skip-sklearn", action="store_true")
    args = parser.parse_args()

    masks, maps = synthetic_class(args.images, args.size, args.seed, args.max_radius)
    pooled = maps.ravel()
    n_regions = sum(measure.label(m, connectivity=2).max() for m in masks)
    print(
        f"class: {args.images} images at {args.size}x{args.size}, {pooled.size:,} pixels, "
        f"{int(masks.any(axis=(1, 2)).sum())} anomalous images, {n_regions} regions, "
        f"{masks.mean():.2%} anomalous pixels; float32 maps {maps.nbytes / 2**20:.0f} MiB"
    )

    t_argsort, _ = best_time(lambda: np.argsort(pooled), max(1, args.repeats - 1))
    t_ours, ours = best_time(lambda: segmentation_metrics(masks, maps, "both"), args.repeats)
    peak = peak_extra_bytes(lambda: segmentation_metrics(masks, maps, "both"))

    rows = [("np.argsort(pooled scores)", t_argsort), ("ours: all metrics, both PROs", t_ours)]
    if not args.skip_sklearn:
        labels = masks.ravel()
        start = time.perf_counter()
        ref = sklearn_three(labels, pooled)
        rows.append(("sklearn roc_auc + AP + PR curve", time.perf_counter() - start))

    step_idx = np.linspace(0, 199, min(args.peer_thresholds, 200)).round().astype(int)
    start = time.perf_counter()
    _, visited = peer_linear200(masks, maps, thresholds_subset=np.unique(step_idx))
    t_peer_subset = time.perf_counter() - start
    n_thresholds = len(np.arange(maps.min(), maps.max(), (maps.max() - maps.min()) / 200))
    t_peer = t_peer_subset / visited * n_thresholds
    rows.append((f"peers' linear200 loop (x{n_thresholds}/{visited} extrapolated)", t_peer))

    print("\ntimings (best of repeats; peers' loop timed once on a subset):")
    for name, seconds in rows:
        print(f"  {name:<48} {seconds:8.3f} s   {seconds / t_argsort:7.2f} x argsort")
    print("\nvalues:", {k: round(v, 6) for k, v in ours.items()})
    print("\nratios and targets:")
    print(f"  ours / argsort            = {t_ours / t_argsort:6.3f}  (target <= 2)")
    print(f"  peers' loop / ours        = {t_peer / t_ours:6.1f}  (target >= 10)")
    if not args.skip_sklearn:
        t_sklearn = rows[2][1]
        print(f"  sklearn three / ours      = {t_sklearn / t_ours:6.1f}")
    print(f"  peak extra memory / maps  = {peak / maps.nbytes:6.3f}  (target < 3; "
          f"{peak / 2**20:.0f} MiB)")

    print("\nvalue checks:")
    if not args.skip_sklearn:
        for key in ("auroc", "ap", "f1_max"):
            print(f"  |{key} - sklearn| = {abs(ours[key] - ref[key]):.2e}")
    if args.check_images:
        small_masks, small_maps = masks[: args.check_images], maps[: args.check_images]
        start = time.perf_counter()
        peer_value, _ = peer_linear200(small_masks, small_maps)
        t_full = time.perf_counter() - start
        start = time.perf_counter()
        mine = segmentation_metrics(small_masks, small_maps, "linear200")["pro"]
        t_mine = time.perf_counter() - start
        print(
            f"  linear200 on {args.check_images} images: peers' full loop {peer_value:.12f} "
            f"({t_full:.1f} s), ours {mine:.12f} ({t_mine:.3f} s), "
            f"|diff| = {abs(peer_value - mine):.2e}"
        )


if __name__ == "__main__":
    main()
