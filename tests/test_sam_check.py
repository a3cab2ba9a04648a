"""The ground-truth-box check's IoU and its summaries, against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clipsam_lib.sam_check import box_iou_summary, gt_box_prompts, mask_iou, region_boxes


def test_mask_iou_by_hand():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :3] = True  # 3 pixels
    b[0, 1:] = True  # 3 pixels, 2 shared: IoU 2 / 4
    assert mask_iou(a, b) == 0.5
    assert mask_iou(a, np.zeros_like(a)) == 0.0
    assert mask_iou(np.zeros_like(a), np.zeros_like(a)) == 0.0


def test_regions_are_components_with_inclusive_boxes_and_specks_dropped():
    mask = np.zeros((20, 20), bool)
    mask[2:7, 3:9] = True  # 30 pixels: kept
    mask[15:17, 15:17] = True  # 4 pixels: a speck (< 16)
    (region, box), = region_boxes(mask)
    assert region.sum() == 30
    assert box.tolist() == [3, 2, 8, 6]  # x0, y0, x1, y1, inclusive


def test_ground_truth_prompts_are_box_only_one_per_region():
    mask = np.zeros((20, 20), bool)
    mask[2:7, 3:9] = True
    mask[10:18, 12:15] = True
    regions, prompts = gt_box_prompts(mask)
    assert prompts.mode == "box" and len(prompts) == len(regions) == 2
    assert prompts.boxes.tolist() == [[3, 2, 8, 6], [12, 10, 14, 17]]
    assert prompts.areas.tolist() == [30, 24]
    assert len(gt_box_prompts(np.zeros((5, 5), bool))[0]) == 0


def test_summary_per_dataset_and_per_defect_by_hand():
    ious = pd.DataFrame({
        "dataset": ["a", "a", "a", "b"],
        "defect": ["pit", "pit", "scratch", "(unnamed)"],
        "iou": [0.2, 0.6, 0.1, 0.9],
        "best_of_3_iou": [0.5, 0.7, 0.1, 0.9],
    })
    per_dataset = box_iou_summary(ious).set_index("dataset")
    assert per_dataset.loc["a", "regions"] == 3
    assert per_dataset.loc["a", "median_iou"] == pytest.approx(0.2)
    assert per_dataset.loc["a", "mean_iou"] == pytest.approx(0.3)
    assert per_dataset.loc["a", "share_iou_ge_0.5"] == pytest.approx(1 / 3)
    assert per_dataset.loc["a", "median_best_of_3"] == pytest.approx(0.5)
    per_defect = box_iou_summary(ious, ("dataset", "defect")).set_index(["dataset", "defect"])
    assert per_defect.loc[("a", "pit"), "median_iou"] == pytest.approx(0.4)
    assert per_defect.loc[("a", "pit"), "median_best_of_3"] == pytest.approx(0.6)
    assert per_defect.loc[("a", "scratch"), "regions"] == 1
    assert per_defect.loc[("b", "(unnamed)"), "median_iou"] == pytest.approx(0.9)
