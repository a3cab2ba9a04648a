"""Metrics against independent references: scikit-learn, brute force, hand computation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage
from skimage import measure
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from clipsam_lib import metrics as metrics_module
from clipsam_lib.metrics import image_metrics, segmentation_metrics

TOL = 1e-9


# --------------------------------------------------------------------------- fixtures


def blob_class(seed: int, n: int = 6, size: int = 40, levels: int | None = None):
    """Masks with several 8-connected regions of various sizes, smooth float32 maps.

    ``levels`` quantizes the maps to that many values (many ties).
    """
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(1, n):  # image 0 stays normal
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(0, size - 8, 2)
            h, w = rng.integers(1, 8, 2)
            masks[i, r : r + h, c : c + w] = True
    noise = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), sigma=(0, 2, 2))
    maps = (noise + 0.6 * ndimage.gaussian_filter(masks.astype(float), (0, 1, 1))).astype(
        np.float32
    )
    if levels:
        lo, hi = maps.min(), maps.max()
        maps = (np.round((maps - lo) / (hi - lo) * (levels - 1)) / (levels - 1)).astype(
            np.float32
        )
    return masks, maps


def near_binary_class(seed: int, n: int = 5, size: int = 32):
    """SAM-like maps: 0/1 predictions that partly miss, plus a few soft values."""
    rng = np.random.default_rng(seed)
    masks, _ = blob_class(seed, n, size)
    maps = np.where(rng.random(masks.shape) < 0.85, masks, ~masks).astype(np.float32)
    soft = rng.random(masks.shape) < 0.02
    maps[soft] = rng.choice([0.25, 0.5, 0.75], size=int(soft.sum()))
    return masks, maps


# --------------------------------------------------------------------------- references


def sklearn_f1_max(labels, scores) -> float:
    """F1-max as the peers compute it: max over the PR curve, 0/0 ignored."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return float(np.max(f1[np.isfinite(f1)]))


def brute_force_linear200(masks, maps, fpr_limit=0.3) -> float:
    """The definition, threshold by threshold, the way cal_pro_score does it."""
    min_th, max_th = maps.min(), maps.max()
    delta = (max_th - min_th) / 200
    regions = [measure.regionprops(measure.label(m, connectivity=2)) for m in masks]
    normal = ~masks
    pros, fprs = [], []
    for th in np.arange(min_th, max_th, delta):
        above = maps > th
        pro = [
            above[i][reg.coords[:, 0], reg.coords[:, 1]].sum() / reg.area
            for i, regs in enumerate(regions)
            for reg in regs
        ]
        pros.append(np.mean(pro))
        fprs.append(np.logical_and(normal, above).sum() / normal.sum())
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < fpr_limit
    fprs = fprs[keep]
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return float(auc(fprs, pros[keep]))


def official_trapezoid(x, y, x_max):
    """Area under y(x) up to x_max, y interpolated at x_max (MVTec AD's trapezoid)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    correction = 0.0
    if x_max not in x:
        ins = int(np.searchsorted(x, x_max, side="right"))
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (
            x[ins] - x[ins - 1]
        )
        correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
    keep = x <= x_max
    x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def brute_force_mvtec_pro(masks, maps, fpr_limit=0.3) -> float:
    """Sweep every distinct score (descending): FPR and mean region overlap at >= t."""
    labelled = [ndimage.label(m, structure=np.ones((3, 3)))[0] for m in masks]
    regions = [(i, lab == r) for i, lab in enumerate(labelled) for r in range(1, lab.max() + 1)]
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        fprs.append((above & normal).sum() / normal.sum())
        pros.append(np.mean([above[i][reg].sum() / reg.sum() for i, reg in regions]))
    fprs.append(1.0)
    pros.append(1.0)
    return official_trapezoid(np.minimum(fprs, 1), np.minimum(pros, 1), fpr_limit) / fpr_limit


# --------------------------------------------------------------------------- AUROC / AP / F1


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("levels", [None, 7])
def test_ranking_metrics_equal_sklearn(seed, levels):
    masks, maps = blob_class(seed, levels=levels)
    got = segmentation_metrics(masks, maps, pro_variant="mvtec")
    y, s = masks.ravel(), maps.ravel()
    assert abs(got["auroc"] - roc_auc_score(y, s)) < TOL
    assert abs(got["ap"] - average_precision_score(y, s)) < TOL
    assert abs(got["f1_max"] - sklearn_f1_max(y, s)) < TOL


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_metrics_on_near_binary_maps(seed):
    masks, maps = near_binary_class(seed)
    got = segmentation_metrics(masks, maps, pro_variant="mvtec")
    y, s = masks.ravel(), maps.ravel()
    assert abs(got["auroc"] - roc_auc_score(y, s)) < TOL
    assert abs(got["ap"] - average_precision_score(y, s)) < TOL
    assert abs(got["f1_max"] - sklearn_f1_max(y, s)) < TOL
    # The step-wise AP is not the trapezoid area under the PR curve on such maps.
    precision, recall, _ = precision_recall_curve(y, s)
    assert abs(got["ap"] - auc(recall, precision)) > 0.01


@pytest.mark.parametrize("seed", [0, 1])
def test_image_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(300) < 0.4
    scores = np.round(rng.normal(size=300) + labels, 1)  # ties
    got = image_metrics(labels.astype(int), scores)
    assert abs(got["auroc"] - roc_auc_score(labels, scores)) < TOL
    assert abs(got["ap"] - average_precision_score(labels, scores)) < TOL
    assert abs(got["f1_max"] - sklearn_f1_max(labels, scores)) < TOL


def test_list_of_differently_sized_images_pools_like_one_array():
    masks, maps = blob_class(3)
    small_mask, small_map = masks[1, :20, :30], maps[1, :20, :30]
    got = segmentation_metrics([masks[0], small_mask], [maps[0], small_map], "mvtec")
    y = np.r_[masks[0].ravel(), small_mask.ravel()]
    s = np.r_[maps[0].ravel(), small_map.ravel()]
    assert abs(got["auroc"] - roc_auc_score(y, s)) < TOL
    assert abs(got["ap"] - average_precision_score(y, s)) < TOL


# --------------------------------------------------------------------------- PRO linear200


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("levels", [None, 50])
def test_linear200_equals_brute_force(seed, levels):
    masks, maps = blob_class(seed, levels=levels)
    got = segmentation_metrics(masks, maps, pro_variant="linear200")["pro"]
    assert abs(got - brute_force_linear200(masks, maps)) < TOL


def test_linear200_on_binary_maps_is_nan_with_warning():
    masks, _ = blob_class(0)
    rng = np.random.default_rng(0)
    maps = np.where(rng.random(masks.shape) < 0.9, masks, ~masks).astype(np.float32)
    with pytest.warns(UserWarning, match="linear200"):
        got = segmentation_metrics(masks, maps, pro_variant="both")
    assert np.isnan(got["pro_linear200"])
    assert 0.0 < got["pro_mvtec"] <= 1.0  # the official variant is defined


# --------------------------------------------------------------------------- PRO mvtec


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("levels", [None, 9])
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_mvtec_pro_equals_brute_force_sweep(seed, levels, fpr_limit):
    masks, maps = blob_class(seed, n=4, size=24, levels=levels)
    got = segmentation_metrics(masks, maps, pro_variant="mvtec", fpr_limit=fpr_limit)["pro"]
    assert abs(got - brute_force_mvtec_pro(masks, maps, fpr_limit)) < TOL


def test_mvtec_pro_on_near_binary_maps_equals_brute_force():
    masks, maps = near_binary_class(4, n=4, size=24)
    got = segmentation_metrics(masks, maps, pro_variant="mvtec")["pro"]
    assert abs(got - brute_force_mvtec_pro(masks, maps)) < TOL


def test_mvtec_pro_is_invariant_to_monotone_transforms():
    masks, maps = blob_class(5)
    maps = maps.astype(np.float64)
    reference = segmentation_metrics(masks, maps, pro_variant="mvtec")
    for transform in (lambda x: np.exp(3 * x), lambda x: x**3 + 2 * x - 7):
        got = segmentation_metrics(masks, transform(maps), pro_variant="mvtec")
        for key in ("auroc", "ap", "f1_max", "pro"):
            assert abs(got[key] - reference[key]) < TOL, key


def test_mvtec_pro_one_region_by_hand():
    # Region: 2 pixels scored 0.9 and 0.5; normal pixels 0.8, 0.3, 0.2, 0.1.
    # Descending sweep (FPR, PRO): 0.9 -> (0, 1/2); 0.8 -> (1/4, 1/2); 0.5 -> (1/4, 1);
    # 0.3 -> (1/2, 1) ... Area up to 0.3: 1/4 * 1/2 + (0.3 - 1/4) * 1 = 0.175.
    # Divided by 0.3: 0.175 / 0.3 = 7/12.
    masks = np.array([[[1, 1, 0], [0, 0, 0]]], dtype=np.uint8)
    maps = np.array([[[0.9, 0.5, 0.8], [0.3, 0.2, 0.1]]])
    assert abs(segmentation_metrics(masks, maps, "mvtec")["pro"] - 7 / 12) < TOL


def test_mvtec_pro_two_regions_of_different_sizes_by_hand():
    # 3 x 4 image. Region B: 3 pixels on a diagonal (ONE region under 8-connectivity)
    # scored 0.9, 0.4, 0.4. Region A: 1 pixel scored 0.7. Eight normal pixels scored
    # 0.8, 0.6, 0.5, 0.3, 0.2, 0.1, 0.1, 0.1, so FPR moves in steps of 1/8.
    # PRO = (overlap_A + overlap_B) / 2. Descending sweep (FPR, PRO):
    #   0.9 -> (0,   (0 + 1/3)/2 = 1/6)
    #   0.8 -> (1/8, 1/6)
    #   0.7 -> (1/8, (1 + 1/3)/2 = 2/3)
    #   0.6 -> (2/8, 2/3)
    #   0.5 -> (3/8, 2/3)   past 0.3: PRO at 0.3 interpolates to 2/3
    # Area: 1/8 * 1/6 + 1/8 * 2/3 + (0.3 - 1/4) * 2/3 = 1/48 + 1/12 + 1/30 = 11/80.
    # Divided by 0.3: 11/24.
    masks = np.zeros((1, 3, 4), dtype=bool)
    maps = np.zeros((1, 3, 4))
    masks[0, [0, 1, 2], [0, 1, 2]] = True
    maps[0, [0, 1, 2], [0, 1, 2]] = [0.9, 0.4, 0.4]
    masks[0, 0, 3] = True
    maps[0, 0, 3] = 0.7
    maps[0][~masks[0]] = [0.8, 0.6, 0.5, 0.3, 0.2, 0.1, 0.1, 0.1]
    assert abs(segmentation_metrics(masks, maps, "mvtec")["pro"] - 11 / 24) < TOL


def test_mvtec_pro_map_constant_on_region_by_hand():
    # Region: 2 pixels both scored 0.5. Normal: 0.9, 0.5, 0.5, 0.1 (two ties with it).
    # Sweep: 0.9 -> (1/4, 0); 0.5 -> (3/4, 1) in one step (diagonal segment); 0.1 -> (1, 1).
    # PRO at FPR 0.3 on that segment: (0.3 - 0.25) / 0.5 = 0.1.
    # Area: 0 up to 0.25, then 0.5 * (0 + 0.1) * 0.05 = 0.0025; / 0.3 = 1/120.
    masks = np.array([[[1, 1, 0], [0, 0, 0]]], dtype=bool)
    maps = np.array([[[0.5, 0.5, 0.9], [0.5, 0.5, 0.1]]], dtype=np.float32)
    assert abs(segmentation_metrics(masks, maps, "mvtec")["pro"] - 1 / 120) < TOL


# --------------------------------------------------------------------------- undefined / invalid


def test_class_without_anomalous_region_has_nan_pro():
    masks = np.zeros((2, 8, 8), dtype=bool)
    maps = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN here is by definition, not a warning
        got = segmentation_metrics(masks, maps, pro_variant="both")
    assert all(np.isnan(v) for v in got.values())


@pytest.mark.parametrize(
    "masks, maps, message",
    [
        (np.zeros((2, 4, 4)), np.zeros((2, 4, 5)), "same shape"),
        (np.full((1, 4, 4), 255), np.zeros((1, 4, 4)), "0/1"),
        (np.full((1, 4, 4), 0.5), np.zeros((1, 4, 4)), "0/1"),
        (np.zeros((1, 4, 4)), np.full((1, 4, 4), np.nan), "NaN"),
        (np.eye(4)[None], np.where(np.eye(4), np.nan, 0.0)[None], "NaN"),
        (np.zeros((1, 4, 4)), np.full((1, 4, 4), -np.inf), "inf"),
        (np.zeros((0, 4, 4)), np.zeros((0, 4, 4)), "empty"),
        (np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 4, 4)), "N x H x W"),
    ],
)
def test_invalid_inputs_raise_value_error(masks, maps, message):
    with pytest.raises(ValueError, match=message):
        segmentation_metrics(masks, maps, pro_variant="both")


def test_invalid_arguments_raise_value_error():
    masks, maps = blob_class(0, n=2, size=10)
    with pytest.raises(ValueError, match="pro_variant"):
        segmentation_metrics(masks, maps, pro_variant="trapezoid")
    with pytest.raises(ValueError, match="fpr_limit"):
        segmentation_metrics(masks, maps, fpr_limit=0.0)
    with pytest.raises(ValueError, match="same length"):
        image_metrics([0, 1], [0.5])


def test_chunked_arithmetic_matches_references(monkeypatch):
    """Groups and pixels are processed in chunks; tiny chunks must not change anything."""
    monkeypatch.setattr(metrics_module, "CHUNK", 7)
    masks, maps = blob_class(2, n=4, size=24, levels=30)
    got = segmentation_metrics(masks, maps, pro_variant="both")
    y, s = masks.ravel(), maps.ravel()
    assert abs(got["auroc"] - roc_auc_score(y, s)) < TOL
    assert abs(got["ap"] - average_precision_score(y, s)) < TOL
    assert abs(got["f1_max"] - sklearn_f1_max(y, s)) < TOL
    assert abs(got["pro_mvtec"] - brute_force_mvtec_pro(masks, maps)) < TOL
    assert abs(got["pro_linear200"] - brute_force_linear200(masks, maps)) < TOL


def test_without_pro_the_ranking_metrics_match_scikit_learn_on_pooled_images_with_ties():
    rng = np.random.default_rng(3)
    masks = [rng.random((9, 11)) > 0.8, rng.random((9, 11)) > 0.9]
    maps = [np.round(rng.random((9, 11)) + m, 1).astype(np.float32) for m in masks]
    y = np.concatenate([m.ravel() for m in masks])
    s = np.concatenate([m.ravel() for m in maps])
    got = segmentation_metrics(masks, maps, pro_variant=None)
    assert set(got) == {"auroc", "ap", "f1_max"}
    precision, recall, _ = precision_recall_curve(y, s)
    f1 = np.max(2 * precision * recall / np.maximum(precision + recall, 1e-12))
    assert got["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert got["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert got["f1_max"] == pytest.approx(f1, abs=1e-12)
