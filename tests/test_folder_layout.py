"""The folder layout (your own data): counts, masks paired by stem, mask-free evaluation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clipsam_lib import cli
from clipsam_lib.config import EvalConfig, load_profile
from clipsam_lib.data import DatasetError, index_dataset, records
from clipsam_lib.evaluate import evaluate_maps
from clipsam_lib.workspace import Workspace


def _tree(root, masks: bool = True):
    rng = np.random.default_rng(0)
    for folder, count in (("good", 3), ("scratch", 2), ("dent", 1)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (20, 30, 3), np.uint8)).save(
                root / folder / f"{folder}_{i}.png")
            if masks and folder != "good":
                mask = np.zeros((20, 30), np.uint8)
                mask[5:9, 5:12] = 255
                (root / "gt" / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(root / "gt" / folder / f"{folder}_{i}_mask.png")
    return root


def test_counts_and_masks_paired_by_stem(tmp_path):
    root = _tree(tmp_path / "widgets")
    index = index_dataset(root, "folder", folder={"normal": "good",
                                                  "abnormal": ["scratch", "dent"], "masks": "gt"})
    recs = records(index)
    assert len(recs) == 6 and sum(r["anomaly"] for r in recs) == 3
    assert {r["cls_name"] for r in recs} == {"widgets"}
    assert {r["specie_name"] for r in recs if r["anomaly"]} == {"scratch", "dent"}
    for rec in recs:
        if rec["anomaly"]:
            assert rec["mask_path"].startswith("gt/") and "_mask" in rec["mask_path"]
            assert rec["mask_path"].endswith(f"{rec['img_path'].split('/')[-1][:-4]}_mask.png")


def test_without_masks_evaluation_gives_image_metrics_only_and_says_so(tmp_path):
    root = _tree(tmp_path / "widgets", masks=False)
    recs = records(index_dataset(root, "folder",
                                 folder={"abnormal": ["scratch", "dent"], "normal": "good"}))
    assert all(r["mask_free"] and r["mask_path"] == "" for r in recs)
    maps = {r["img_path"]: np.full((20, 30), 0.9 if r["anomaly"] else 0.1, np.float32)
            for r in recs}
    with pytest.warns(UserWarning, match="no masks"):
        row = evaluate_maps(recs, root, lambda r: maps[r["img_path"]],
                            EvalConfig(image_score="map_max"), 32, "widgets").iloc[0]
    assert np.isnan(row.pixel_auroc) and np.isnan(row.pixel_pro)
    assert row.image_auroc == 1.0 and "image-level metrics only" in row.note


def test_folder_profile_cli_and_errors(tmp_path, capsys):
    root = _tree(tmp_path / "widgets")
    assert cli.main(["index", "--dataset", "folder", "--root", str(root), "--abnormal",
                     "scratch,dent", "--masks", "gt", "--out", str(tmp_path / "meta.json")]) == 0
    assert '"test": 6' in capsys.readouterr().out
    with pytest.raises(DatasetError, match=r"widgets/bad does not exist.*--abnormal"):
        index_dataset(root, "folder", folder={"abnormal": ["bad"]})
    profile = load_profile("smoke", data_dir=str(tmp_path), directions=[], datasets=[
        {"name": "mine", "layout": "folder", "root": "widgets", "abnormal": ["scratch", "dent"],
         "masks": "gt"}])
    handle = Workspace(profile).dataset("mine")
    assert len(handle.records()) == 6
