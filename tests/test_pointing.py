"""The pointing game (clipsam_lib.pointing) against brute force and hand-computed cases."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
from PIL import Image

from clipsam_lib import pointing
from clipsam_lib.config import load_profile
from clipsam_lib.pipeline import MapSet


def test_the_tolerant_region_is_every_pixel_within_the_distance_of_a_defect():
    rng = np.random.default_rng(0)
    mask = rng.random((23, 31)) > 0.97
    rows, cols = np.nonzero(mask)
    yy, xx = np.mgrid[0:23, 0:31]
    nearest = np.sqrt((yy[..., None] - rows) ** 2 + (xx[..., None] - cols) ** 2).min(-1)
    for tolerance in (0, 1, 3, 6):
        assert np.array_equal(pointing.tolerant_region(mask, tolerance), nearest <= tolerance)


def test_a_map_hits_when_its_maximum_is_inside_and_ties_count_by_share():
    region = np.zeros((4, 4), bool)
    region[0, 0] = True
    peak_inside = np.zeros((4, 4))
    peak_inside[0, 0] = 1.0
    peak_outside = np.zeros((4, 4))
    peak_outside[3, 3] = 1.0
    tie = peak_inside + peak_outside
    assert pointing.map_hit(peak_inside, region) == 1.0
    assert pointing.map_hit(peak_outside, region) == 0.0
    assert pointing.map_hit(tie, region) == 0.5
    assert pointing.map_hit(np.ones((4, 4)), region) == region.mean()  # flat: chance


def test_prompt_points_are_x_then_y():
    region = np.zeros((6, 8), bool)
    region[2, 5] = True  # row 2, column 5
    assert pointing.prompt_hits(np.array([[5, 2], [2, 5], [5.4, 1.6]]), region).tolist() == [
        True, False, True]


def test_a_runs_row_by_hand(tmp_path):
    """Two anomalous images and a normal one: A's map peaks on its defect, B's off it;
    A has two prompts (one on its defect), B one (off it). Tolerance 0."""
    profile = load_profile("smoke")
    root, maps_dir = tmp_path / "data", tmp_path / "maps"
    root.mkdir()
    maps_dir.mkdir()
    shape = (10, 12)
    records, paths = [], {}
    cases = {"a": ((1, 1), (1, 1), [[1, 1], [8, 8]]),  # (defect, map peak, points (x, y))
             "b": ((5, 5), (0, 9), [[9, 0]]),
             "normal": (None, (3, 3), [])}
    for name, (defect, peak, points) in cases.items():
        rec = {"img_path": f"{name}.png", "cls_name": "toy", "anomaly": defect is not None,
               "mask_path": f"{name}_mask.png" if defect else None,
               "height": shape[0], "width": shape[1]}
        if defect:
            mask = np.zeros(shape, np.uint8)
            mask[defect] = 255
            Image.fromarray(mask).save(root / rec["mask_path"])
        score = np.zeros(shape, np.float32)
        score[peak] = 1.0
        paths[rec["img_path"]] = maps_dir / f"{name}.npy"
        np.save(paths[rec["img_path"]], score)
        paths[rec["img_path"]].with_suffix(".json").write_text(json.dumps(
            {"regions": len(points), "points": points, "boxes": [], "scores": []}))
        records.append(rec)
    run = SimpleNamespace(profile=profile, records=records, label="toy", train_dataset="t",
                          test_dataset="d", maps=MapSet(maps_dir, "key", paths))
    regions = pointing.defect_regions(records, root, profile.eval, tolerance=0)
    assert sorted(regions) == ["a.png", "b.png"]
    row = pointing.pointing_row(run, regions)
    assert row["anomalous_images"] == 2
    assert row["map_hit"] == 0.5
    assert row["chance"] == 1 / (10 * 12)
    assert row["prompts_per_image"] == 1.5
    assert row["prompts_on_defect"] == 1 / 3
    assert row["images_with_a_prompt_on_defect"] == 0.5
    off = SimpleNamespace(**{**vars(run), "profile": profile.replace(**{"mmr.enabled": False})})
    row = pointing.pointing_row(off, regions)
    assert "prompts_on_defect" not in row and "MMR off" in row["note"]
