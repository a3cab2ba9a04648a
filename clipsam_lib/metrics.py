"""Exact, fast pixel- and image-level metrics (../spec/evaluation.md).

Every metric here is a function of where the anomalous pixels' scores fall among the
normal pixels' scores. So the work is:

1. one in-place *value* sort of the normal pixels' scores (numpy's SIMD sort; no argsort,
   no index array, no second copy), and an argsort of the anomalous pixels only (usually
   a few percent of the pixels);
2. for each distinct anomalous score, binary searches into the sorted normal scores give
   ``#normal < v`` and ``#normal <= v``; integer (int64) counts and float64 sums over the
   distinct anomalous scores then give AUROC, AP, F1-max and the official ("mvtec") PRO.
   This is the same arithmetic as a descending sweep over the pooled sorted scores that
   keeps the last point of each run of equal scores, grouped differently: thresholds that
   only hold normal pixels change neither recall nor PRO, so they need no visit;
3. "linear200" (the peers' 200-threshold PRO) labels each mask once (8-connected) and
   histograms the anomalous pixels' scores into the 200 threshold bins, weighted by
   1 / |region|; its FPRs are 200 binary searches into the sorted normal scores.

Public API: :func:`segmentation_metrics` and :func:`image_metrics`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

PRO_VARIANTS = ("linear200", "mvtec", "both")
LINEAR_STEPS = 200  # thresholds of the peers' cal_pro_score
# Per-group and per-pixel arithmetic runs in chunks of this many elements, so its
# temporaries stay at a few MiB however many anomalous pixels a class has.
CHUNK = 1 << 20
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass
class PooledScores:
    """The pooled pixels of one class, arranged for the metrics.

    ``neg``: scores of normal pixels, sorted ascending. ``pos``: scores of anomalous pixels,
    sorted ascending; ``pos_region[i]`` is the region (0..R-1, over all images) of
    ``pos[i]``; ``region_sizes[r]`` is the pixel count of region ``r``.
    """

    neg: np.ndarray
    pos: np.ndarray
    pos_region: np.ndarray
    region_sizes: np.ndarray


# --------------------------------------------------------------------------- public API


def segmentation_metrics(
    masks: np.ndarray | Sequence[np.ndarray],
    maps: np.ndarray | Sequence[np.ndarray],
    pro_variant: str | None = "linear200",
    fpr_limit: float = 0.3,
) -> dict[str, float]:
    """Pixel-level AUROC, AP, F1-max and PRO of one class, on all its pixels pooled.

    Args:
        masks: ground truth, bool or {0, 1}, ``N x H x W`` (or ``H x W`` for one image, or
            a sequence of ``H_i x W_i`` arrays when image sizes differ).
        maps: anomaly scores, same shape(s) as ``masks``; any real dtype (float32 is kept
            as is, never copied to float64 wholesale).
        pro_variant: ``"linear200"`` (peers' ``cal_pro_score``), ``"mvtec"`` (official MVTec
            AD AUPRO), ``"both"``, or None (no PRO: the ranking metrics alone).
        fpr_limit: FPR integration limit of PRO, in (0, 1].

    Returns:
        ``{"auroc", "ap", "f1_max", "pro"}`` as floats in [0, 1]; with ``"both"``, the key
        ``"pro"`` is replaced by ``"pro_linear200"`` and ``"pro_mvtec"``; with None there is
        no PRO key. NaN where a value
        is undefined (no anomalous or no normal pixel; PRO without any anomalous region;
        linear200 on (near-)binary maps, with a warning).

    Raises:
        ValueError: mismatched shapes, NaN/inf scores, masks with values other than 0/1.
    """
    if pro_variant is not None and pro_variant not in PRO_VARIANTS:
        raise ValueError(f"pro_variant must be one of {PRO_VARIANTS} or None, got "
                         f"{pro_variant!r}.")
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit!r}.")
    pooled = pool_pixels(masks, maps)
    groups = positive_groups(pooled.neg, pooled.pos)
    result = ranking_metrics(pooled.neg.size, pooled.pos.size, groups)
    if pro_variant in ("linear200", "both"):
        result["pro_linear200"] = pro_linear200(pooled, fpr_limit)
    if pro_variant in ("mvtec", "both"):
        result["pro_mvtec"] = pro_mvtec(pooled, groups, fpr_limit)
    if pro_variant in ("linear200", "mvtec"):
        result["pro"] = result.pop(f"pro_{pro_variant}")
    return result


def image_metrics(
    labels: np.ndarray | Sequence, scores: np.ndarray | Sequence
) -> dict[str, float]:
    """Image-level AUROC, AP and F1-max (same definitions as the pixel metrics).

    ``labels``: 1-D bool or {0, 1} (1 = anomalous); ``scores``: 1-D finite reals.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    if labels.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(
            f"labels and scores must be 1-D of the same length; got shapes {labels.shape} "
            f"and {scores.shape}."
        )
    is_anomalous = _as_bool_mask(labels, "labels")
    scores = _as_real_scores(scores)
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf values; fix the model output first.")
    neg = np.sort(scores[~is_anomalous])
    pos = np.sort(scores[is_anomalous])
    return ranking_metrics(neg.size, pos.size, positive_groups(neg, pos))


# --------------------------------------------------------------------------- pooling


def pool_pixels(
    masks: np.ndarray | Sequence[np.ndarray], maps: np.ndarray | Sequence[np.ndarray]
) -> PooledScores:
    """Validate, label regions (8-connected, per image) and sort the pooled pixels.

    Extra memory: one buffer for the normal pixels' scores (at most the maps' size) plus
    the anomalous pixels and per-image temporaries.
    """
    mask_list, map_list = _image_lists(masks, maps)
    dtype = np.result_type(*(m.dtype for m in map_list))
    if not np.issubdtype(dtype, np.floating):
        dtype = np.dtype(np.float64)  # integer or bool maps: compare as float64
    bool_masks = [_as_bool_mask(mk, f"masks[{i}]") for i, mk in enumerate(mask_list)]
    n_pos_per_image = [int(np.count_nonzero(mk)) for mk in bool_masks]
    n_neg = sum(mk.size for mk in bool_masks) - sum(n_pos_per_image)

    neg = np.empty(n_neg, dtype=dtype)
    pos_parts, region_parts, size_parts = [], [], []
    start, n_regions = 0, 0
    for mk, amap, n_pos in zip(bool_masks, map_list, n_pos_per_image):
        stop = start + mk.size - n_pos
        neg[start:stop] = amap[~mk]
        start = stop
        if n_pos:
            labels, n = ndimage.label(mk, structure=_EIGHT_CONNECTED)
            region_of_pixel = labels[mk] - 1  # int32, 0..n-1
            pos_parts.append(amap[mk].astype(dtype, copy=False))
            region_parts.append(region_of_pixel + np.int32(n_regions))
            size_parts.append(np.bincount(region_of_pixel, minlength=n))
            n_regions += n

    neg.sort()  # in place; NaN sort to the end, -inf to the start: checked below for free
    if n_neg and not (np.isfinite(neg[0]) and np.isfinite(neg[-1])):
        raise ValueError("maps contain NaN or inf values; fix the model output first.")
    pos = _concatenate(pos_parts, dtype)
    if not np.isfinite(pos).all():
        raise ValueError("maps contain NaN or inf values; fix the model output first.")
    order = np.argsort(pos)
    pos = pos[order]
    pos_region = _concatenate(region_parts, np.int32)[order]
    return PooledScores(
        neg=neg, pos=pos, pos_region=pos_region, region_sizes=_concatenate(size_parts, np.int64)
    )


def _concatenate(parts: list[np.ndarray], dtype) -> np.ndarray:
    """Concatenate and empty ``parts`` (so the pieces are freed as soon as possible)."""
    out = np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype)
    parts.clear()
    return out


def _image_lists(masks, maps) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split N x H x W arrays (or H x W, or sequences of 2-D arrays) into per-image views."""
    if isinstance(masks, np.ndarray) and isinstance(maps, np.ndarray):
        if masks.shape != maps.shape:
            raise ValueError(
                f"masks and maps must have the same shape; got {masks.shape} and {maps.shape}."
            )
        if maps.ndim == 2:
            masks, maps = masks[None], maps[None]
        if maps.ndim != 3:
            raise ValueError(f"masks and maps must be N x H x W (or H x W); got {maps.shape}.")
        mask_list, map_list = list(masks), list(maps)
    else:
        mask_list = [np.asarray(m) for m in masks]
        map_list = [np.asarray(m) for m in maps]
        if len(mask_list) != len(map_list):
            raise ValueError(
                f"got {len(mask_list)} masks but {len(map_list)} maps; they must pair up."
            )
        for i, (mk, amap) in enumerate(zip(mask_list, map_list)):
            if mk.shape != amap.shape or amap.ndim != 2:
                raise ValueError(
                    f"image {i}: mask shape {mk.shape} and map shape {amap.shape} must be "
                    "the same H x W."
                )
    if not map_list or any(m.size == 0 for m in map_list):
        raise ValueError("masks and maps are empty; need at least one non-empty image.")
    for amap in map_list:
        _as_real_scores(amap)  # dtype check only
    return mask_list, map_list


def _as_bool_mask(mask: np.ndarray, name: str) -> np.ndarray:
    """A bool view/copy of a bool or {0, 1} array; anything else is a ValueError."""
    if mask.dtype == bool:
        return mask
    if not (np.issubdtype(mask.dtype, np.number)):
        raise ValueError(f"{name} must be bool or 0/1 numbers, got dtype {mask.dtype}.")
    is_one = mask == 1
    bad = ~(is_one | (mask == 0))
    if bad.any():
        example = mask[bad].flat[0]
        raise ValueError(
            f"{name} must hold only 0/1 or True/False, found {example!r}; binarize it first "
            "(e.g. mask > 0)."
        )
    return is_one


def _as_real_scores(scores: np.ndarray) -> np.ndarray:
    if scores.dtype == bool or np.issubdtype(scores.dtype, np.integer):
        return scores.astype(np.float64)
    if not np.issubdtype(scores.dtype, np.floating):
        raise ValueError(f"maps/scores must be real numbers, got dtype {scores.dtype}.")
    return scores


# --------------------------------------------------------------------------- AUROC, AP, F1


@dataclass
class PositiveGroups:
    """Distinct anomalous scores (ascending) and where they fall among the normal ones."""

    values: np.ndarray  # distinct anomalous scores, ascending
    starts: np.ndarray  # index of each group's first element in the sorted ``pos`` (int64)
    counts: np.ndarray  # anomalous pixels per group (int64)
    neg_below: np.ndarray  # #normal < value (int64)
    neg_at_or_below: np.ndarray  # #normal <= value (int64)


def positive_groups(neg: np.ndarray, pos: np.ndarray) -> PositiveGroups:
    """Group the sorted anomalous scores by value; binary-search them in the sorted normal ones."""
    is_start = np.empty(pos.size, dtype=bool)
    is_start[:1] = True
    np.not_equal(pos[1:], pos[:-1], out=is_start[1:])
    starts = np.flatnonzero(is_start).astype(np.int64)
    del is_start
    values = pos[starts]
    return PositiveGroups(
        values=values,
        starts=starts,
        counts=np.diff(starts, append=pos.size),
        neg_below=np.searchsorted(neg, values, side="left").astype(np.int64, copy=False),
        neg_at_or_below=np.searchsorted(neg, values, side="right").astype(np.int64, copy=False),
    )


def _chunks(n: int) -> Iterator[slice]:
    for start in range(0, n, CHUNK):
        yield slice(start, min(start + CHUNK, n))


def ranking_metrics(n_neg: int, n_pos: int, groups: PositiveGroups) -> dict[str, float]:
    """AUROC, AP and F1-max from the anomalous score groups (see :func:`positive_groups`)."""
    nan = float("nan")
    if n_pos == 0:
        return {"auroc": nan, "ap": nan, "f1_max": nan}
    twice_wins, precision_sum, f1_max = 0, 0.0, 0.0
    for part in _chunks(groups.values.size):
        counts, below = groups.counts[part], groups.neg_below[part]
        # AUROC = P(anomalous > normal) + 1/2 P(tie), the trapezoid ROC area: per group,
        # counts * (#below + #tied / 2); doubled, it is an exact int64 sum.
        twice_wins += int(np.dot(counts, below + groups.neg_at_or_below[part]))
        # Descending sweep: at threshold "score >= v" of each distinct anomalous score v,
        # TP = #anomalous >= v, FP = #normal >= v; recall rises by counts / n_pos there.
        true_pos = n_pos - groups.starts[part]
        predicted_pos = true_pos + (n_neg - below)
        precision_sum += float(np.dot(counts, true_pos / predicted_pos))
        f1_max = max(f1_max, float(np.max(2.0 * true_pos / (predicted_pos + n_pos))))
    auroc = twice_wins / (2 * n_pos * n_neg) if n_neg else nan
    return {"auroc": float(auroc), "ap": precision_sum / n_pos, "f1_max": f1_max}


# --------------------------------------------------------------------------- PRO


def _region_weights(pooled: PooledScores) -> np.ndarray:
    """Per region: how much PRO rises per pixel turning positive, 1/|region|/#regions."""
    return 1.0 / (pooled.region_sizes * float(pooled.region_sizes.size))


def _group_weights(pooled: PooledScores, groups: PositiveGroups, part: slice) -> np.ndarray:
    """PRO gained by each group of ``part`` turning positive (sum of its pixels' weights)."""
    first = groups.starts[part.start]
    last = groups.starts[part.stop] if part.stop < groups.starts.size else pooled.pos.size
    pixel_weights = _region_weights(pooled)[pooled.pos_region[first:last]]
    return np.add.reduceat(pixel_weights, groups.starts[part] - first)


def pro_mvtec(pooled: PooledScores, groups: PositiveGroups, fpr_limit: float = 0.3) -> float:
    """Official MVTec AD AUPRO up to ``fpr_limit``, normalized by it (exact, float64).

    Curve: points at each distinct score (descending), (0, 0) prepended, linear between
    points; the PRO at ``fpr_limit`` is interpolated on the segment that crosses it. Only
    groups holding normal pixels have width; a group at score v spans
    [#normal > v, #normal >= v] / #normal with PRO going from PRO(> v) to PRO(>= v).
    """
    neg, n_neg = pooled.neg, pooled.neg.size
    if pooled.region_sizes.size == 0 or n_neg == 0:
        return float("nan")
    # The crossing group holds the (k+1)-th highest normal score, k being the most normal
    # pixels whose FPR k / n_neg stays <= the limit (float64, as the curve compares it).
    k = _max_count_within(fpr_limit, n_neg)
    cut_value = neg[n_neg - 1 - k] if k < n_neg else neg[0]
    normal_at_or_below_cut = int(np.searchsorted(neg, cut_value, side="right"))
    if k == n_neg:  # limit 1: every normal pixel fully counted
        normal_at_or_below_cut = 0
    first_above = int(np.searchsorted(groups.values, cut_value, side="right"))
    first_at_or_above = int(np.searchsorted(groups.values, cut_value, side="left"))

    # Fully counted: the normal pixels above cut_value. Each one's trapezoid holds the
    # weight of every anomalous group above it, and half the weight of a tied group. So
    # an anomalous group g adds weight_g * (#counted normal < v_g + #counted <= v_g) / 2.
    full_area, pro_above, pro_at_or_above = 0.0, 0.0, 0.0
    for part in _chunks(groups.values.size):
        weights = _group_weights(pooled, groups, part)
        counted = np.maximum(groups.neg_below[part] - normal_at_or_below_cut, 0)
        counted += np.maximum(groups.neg_at_or_below[part] - normal_at_or_below_cut, 0)
        full_area += float(np.dot(weights, counted))
        pro_above += float(weights[max(first_above - part.start, 0) :].sum())
        pro_at_or_above += float(weights[max(first_at_or_above - part.start, 0) :].sum())
    full_area /= 2.0 * n_neg

    partial = 0.0
    fpr_before = (n_neg - normal_at_or_below_cut) / n_neg
    if k < n_neg and fpr_before != fpr_limit:  # the limit falls inside the cut group
        fpr_after = (n_neg - int(np.searchsorted(neg, cut_value, side="left"))) / n_neg
        pro_before, pro_after = min(pro_above, 1.0), min(pro_at_or_above, 1.0)
        pro_at_limit = pro_before + (pro_after - pro_before) * (
            (fpr_limit - fpr_before) / (fpr_after - fpr_before)
        )
        partial = 0.5 * (pro_before + pro_at_limit) * (fpr_limit - fpr_before)
    return float((full_area + partial) / fpr_limit)


def _max_count_within(fpr_limit: float, n_neg: int) -> int:
    """Largest k in [0, n_neg] with k / n_neg <= fpr_limit, as float64 compares it."""
    k = min(int(np.floor(fpr_limit * n_neg)), n_neg)
    while k < n_neg and (k + 1) / n_neg <= fpr_limit:
        k += 1
    while k > 0 and k / n_neg > fpr_limit:
        k -= 1
    return k


def linear200_thresholds(min_score: np.generic, max_score: np.generic) -> np.ndarray:
    """The peers' thresholds, computed exactly as their code computes them.

    ``cal_pro_score`` does ``delta = (max_th - min_th) / 200`` on the maps' numpy scalars
    and ``np.arange(min_th, max_th, delta)``: on NumPy >= 2 that is a float64 array whose
    length float rounding may make 201, not 200, exactly as in their runs.
    """
    delta = (max_score - min_score) / LINEAR_STEPS
    return np.arange(min_score, max_score, delta)


def pro_linear200(pooled: PooledScores, fpr_limit: float = 0.3) -> float:
    """The peers' PRO (APRIL-GAN / AnomalyCLIP ``cal_pro_score``), without its loop.

    At each threshold t of :func:`linear200_thresholds`: PRO(t) = mean over regions of the
    fraction of the region with score > t; FPR(t) = fraction of normal pixels > t. Points
    with FPR < ``fpr_limit`` (strict) are kept, their FPRs min-max rescaled to [0, 1], and
    the trapezoid area of PRO over them is returned. NaN (with a warning) when fewer than
    two distinct FPRs are kept, e.g. on binary maps, or when there is no anomalous region.
    """
    neg, pos = pooled.neg, pooled.pos
    n_regions = pooled.region_sizes.size
    if n_regions == 0 or neg.size == 0:
        return float("nan")
    min_score = min(neg[0], pos[0])
    max_score = max(neg[-1], pos[-1])
    if min_score == max_score:
        warnings.warn(
            "linear200 PRO is undefined on a constant map; returning NaN.", stacklevel=3
        )
        return float("nan")
    thresholds = _floor_to_dtype(linear200_thresholds(min_score, max_score), neg.dtype)
    # score > t  <=>  score > floor_dtype(t) for scores of that dtype, so all comparisons
    # stay in the maps' dtype (no float64 copy of the sorted scores).
    fprs = (neg.size - np.searchsorted(neg, thresholds, side="right")) / neg.size
    # Bin j = #thresholds below the score: the pixel counts at thresholds 0..j-1.
    region_weights = _region_weights(pooled)
    weight_per_bin = np.zeros(len(thresholds) + 1)
    for part in _chunks(pos.size):
        bins = np.searchsorted(thresholds, pos[part], side="left")
        pixel_weights = region_weights[pooled.pos_region[part]]
        weight_per_bin += np.bincount(bins, pixel_weights, minlength=len(thresholds) + 1)
    pros = np.cumsum(weight_per_bin[::-1])[::-1][1:]  # PRO(t_k) = sum over bins j > k

    kept = fprs < fpr_limit
    kept_fprs, kept_pros = fprs[kept], pros[kept]
    if np.unique(kept_fprs).size < 2:
        warnings.warn(
            f"linear200 PRO is undefined here: fewer than two distinct FPRs below "
            f"{fpr_limit} among its thresholds (binary or near-binary maps); returning NaN. "
            "Use pro_variant='mvtec' for such maps.",
            stacklevel=3,
        )
        return float("nan")
    rescaled = (kept_fprs - kept_fprs.min()) / (kept_fprs.max() - kept_fprs.min())
    # sklearn.metrics.auc on x that decreases (FPR falls as t rises): -trapezoid.
    return float(-np.trapezoid(kept_pros, rescaled))


def _floor_to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Largest ``dtype`` number <= each value (round toward -inf)."""
    rounded = values.astype(dtype)
    too_high = rounded.astype(values.dtype) > values
    rounded[too_high] = np.nextafter(rounded[too_high], dtype.type(-np.inf))
    return rounded
