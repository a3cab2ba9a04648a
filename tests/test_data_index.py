"""index_dataset on trees in the real layouts: the counts of datasets.md, and bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from clipsam_lib import cli
from clipsam_lib.data import (
    DatasetError,
    default_meta_path,
    index_dataset,
    load_or_build_index,
    records,
)

# Expected numbers typed from datasets.md (independent of the fixture tables).
MVTEC_TEST = {
    "bottle": (83, 20), "cable": (150, 58), "capsule": (132, 23), "carpet": (117, 28),
    "grid": (78, 21), "hazelnut": (110, 40), "leather": (124, 32), "metal_nut": (115, 22),
    "pill": (167, 26), "screw": (160, 41), "tile": (117, 33), "toothbrush": (42, 12),
    "transistor": (100, 60), "wood": (79, 19), "zipper": (151, 32),
}
VISA_TEST = {
    "candle": (100, 100), "capsules": (60, 100), "cashew": (50, 100), "chewinggum": (50, 100),
    "fryum": (50, 100), "macaroni1": (100, 100), "macaroni2": (100, 100), "pcb1": (100, 100),
    "pcb2": (100, 100), "pcb3": (101, 100), "pcb4": (101, 100), "pipe_fryum": (50, 100),
}
REQUIRED = {"img_path", "mask_path", "cls_name", "specie_name", "anomaly", "width", "height"}


def _count(index, split):
    return sum(len(v) for v in index[split].values())


def _check_records(root, index):
    for split in index.values():
        for cls, recs in split.items():
            for r in recs:
                assert REQUIRED <= set(r) and r["cls_name"] == cls
                assert (root / r["img_path"]).is_file()
                assert (r["mask_path"] != "") == bool(r["anomaly"])
                if r["mask_path"]:
                    assert (root / r["mask_path"]).is_file()


# -- counts per layout ---------------------------------------------------------------------
def test_mvtec_counts(mvtec_tree):
    index = index_dataset(mvtec_tree, "mvtec")
    assert sorted(index["test"]) == sorted(MVTEC_TEST)
    for cls, (total, good) in MVTEC_TEST.items():
        recs = index["test"][cls]
        assert (len(recs), sum(r["anomaly"] == 0 for r in recs)) == (total, good), cls
    assert _count(index, "test") == 1725 and _count(index, "train") == 3629
    assert sum(r["anomaly"] for rs in index["test"].values() for r in rs) == 1258
    _check_records(mvtec_tree, index)
    rec = next(r for r in index["test"]["bottle"] if r["anomaly"])
    assert rec["mask_path"] == f"bottle/ground_truth/{rec['specie_name']}/" + \
        rec["img_path"].rsplit("/", 1)[1].replace(".png", "_mask.png")
    assert (rec["width"], rec["height"]) == (8, 8)


def test_visa_counts(visa_tree):
    index = index_dataset(visa_tree, "visa")
    assert sorted(index["test"]) == sorted(VISA_TEST)
    for cls, (normal, anomalous) in VISA_TEST.items():
        recs = index["test"][cls]
        assert sum(r["anomaly"] == 0 for r in recs) == normal, cls
        assert sum(r["anomaly"] == 1 for r in recs) == anomalous, cls
        assert all(r["anomaly"] == 0 for r in index["train"][cls])
    assert _count(index, "test") == 2162 and _count(index, "train") == 8659
    _check_records(visa_tree, index)
    assert all(r["img_path"].endswith(".JPG") for rs in index["test"].values() for r in rs)


def test_mtd_counts_label_from_mask(mtd_tree):
    index = index_dataset(mtd_tree, "mtd")
    assert index["train"] == {} and list(index["test"]) == ["mtd"]
    recs = index["test"]["mtd"]
    assert len(recs) == 1344 and sum(r["anomaly"] for r in recs) == 392
    by_type = {}
    for r in recs:
        by_type[r["specie_name"]] = by_type.get(r["specie_name"], 0) + r["anomaly"]
    assert by_type == {"blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103,
                       "": 0}
    assert {r["mask_threshold"] for r in recs} == {0.0}
    _check_records(mtd_tree, index)


def test_mtd_threshold_is_a_protocol_field(tmp_path, data_trees):
    """The fixture's defect masks are 255 in a block with a 37-valued soft edge."""
    root = data_trees.mtd(tmp_path / "mtd", {"Crack": 2, "Free": 1})
    assert sum(r["anomaly"] for r in index_dataset(root, "mtd")["test"]["mtd"]) == 2
    high = index_dataset(root, "mtd", mask_threshold=254.0)["test"]["mtd"]
    assert sum(r["anomaly"] for r in high) == 2 and high[0]["mask_threshold"] == 254.0
    assert sum(r["anomaly"] for r in index_dataset(root, "mtd", mask_threshold=255.0)
               ["test"]["mtd"]) == 0


def test_ksdd2_official_and_peer_variants(ksdd2_tree):
    official = index_dataset(ksdd2_tree, "ksdd2")
    test, train = official["test"]["ksdd2"], official["train"]["ksdd2"]
    assert (len(test), sum(r["anomaly"] for r in test)) == (1004, 110)
    assert (len(train), sum(r["anomaly"] for r in train)) == (2331, 246)
    assert all(r["img_path"].startswith("test/") and r["variant"] == "official" for r in test)
    peer = index_dataset(ksdd2_tree, "ksdd2", split="train")
    recs = peer["test"]["ksdd2"]
    assert peer["train"] == {}
    assert (len(recs), sum(r["anomaly"] for r in recs)) == (2331, 246)
    assert all(r["img_path"].startswith("train/") and r["variant"] == "peer_compatible"
               for r in recs)
    _check_records(ksdd2_tree, official)


def test_index_is_deterministic_and_sorted(mvtec_tree):
    first = index_dataset(mvtec_tree, "mvtec")
    assert json.dumps(first) == json.dumps(index_dataset(mvtec_tree, "mvtec"))
    paths = [r["img_path"] for r in first["test"]["cable"]]
    assert paths == sorted(paths) and list(first["test"]) == sorted(first["test"])


def test_mvtec_pairs_masks_by_stem_not_position(tmp_path, data_trees):
    root = tmp_path / "mvtec"
    pics = data_trees.pictures
    for stem in ("000", "002"):
        data_trees.put(root / "nut" / "test" / "crack" / f"{stem}.png", pics.rgb_png)
    for stem in ("000", "001", "002"):  # an extra mask shifts sorted positions
        data_trees.put(root / "nut" / "ground_truth" / "crack" / f"{stem}_mask.png", pics.mask_png)
    recs = index_dataset(root, "mvtec")["test"]["nut"]
    assert [r["mask_path"] for r in recs] == ["nut/ground_truth/crack/000_mask.png",
                                             "nut/ground_truth/crack/002_mask.png"]


# -- records() -----------------------------------------------------------------------------
def test_records_flatten_and_subset(mvtec_tree):
    index = index_dataset(mvtec_tree, "mvtec")
    every = records(index)
    assert len(every) == 1725 and every == records(index)
    subset = records(index, classes=["bottle", "cable"], max_per_class=10)
    for cls in ("bottle", "cable"):
        recs = [r for r in subset if r["cls_name"] == cls]
        assert len(recs) == 10 and 0 < sum(r["anomaly"] for r in recs) < 10
    bottle = [r for r in subset if r["cls_name"] == "bottle" and r["anomaly"]]
    assert len({r["specie_name"] for r in bottle}) == 3  # spread over every defect type
    tiny = records(index, classes=["toothbrush"], max_per_class=2)
    assert sorted(r["anomaly"] for r in tiny) == [0, 1]
    assert len(records(index, "train", max_per_class=5)) == 15 * 5
    with pytest.raises(DatasetError, match="gear.*not in the test split"):
        records(index, classes=["gear"])


def test_load_or_build_index_writes_and_reuses(tmp_path, data_trees):
    root = data_trees.ksdd2(tmp_path / "KolektorSDD2", {"train": (4, 1), "test": (3, 1)})
    official = load_or_build_index(root, "ksdd2")
    assert json.loads((root / "meta.json").read_text()) == official
    peer = load_or_build_index(root, "ksdd2", split="train")
    assert default_meta_path(root, "ksdd2", "train") == root / "meta_peer.json"
    assert json.loads((root / "meta_peer.json").read_text()) == peer
    (root / "meta.json").write_text(json.dumps({**official, "marker": 1}))
    assert load_or_build_index(root, "ksdd2")["marker"] == 1  # reused, not rebuilt
    assert "marker" not in load_or_build_index(root, "ksdd2", rebuild=True)
    (root / "meta.json").write_text("{not json")
    assert load_or_build_index(root, "ksdd2") == official


# -- bad input -----------------------------------------------------------------------------
def test_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=f"{missing} does not exist.*clipsam download"):
        index_dataset(missing, "mvtec")


@pytest.mark.parametrize(("layout", "expected"), [
    ("mvtec", r"not an MVTec AD tree: expected <class>/test/<defect>/NNN.png"),
    ("mtd", r"not an MTD tree: expected MT_<defect>/Imgs"),
    ("ksdd2", r"not a KSDD2 tree: train/ and test/ are missing"),
])
def test_wrong_layout_names_what_was_expected(visa_tree, layout, expected):
    with pytest.raises(DatasetError, match=expected):
        index_dataset(visa_tree, layout)


def test_visa_layout_expected(mvtec_tree):
    with pytest.raises(DatasetError, match=r"1cls.csv is missing.*not a raw VisA tree"):
        index_dataset(mvtec_tree, "visa")


def test_unknown_layout_and_split(mvtec_tree, ksdd2_tree):
    with pytest.raises(DatasetError, match="unknown; use one of mvtec, visa, mtd, ksdd2"):
        index_dataset(mvtec_tree, "mpdd")
    with pytest.raises(DatasetError, match="applies to ksdd2 only"):
        index_dataset(mvtec_tree, "mvtec", split="train")
    with pytest.raises(DatasetError, match="KSDD2 split 'val' is unknown"):
        index_dataset(ksdd2_tree, "ksdd2", split="val")


def _small_visa(tmp_path, data_trees):
    return data_trees.visa(tmp_path / "visa", {"candle": (2, 1, 2)})


def test_visa_row_pointing_at_missing_file(tmp_path, data_trees):
    root = _small_visa(tmp_path, data_trees)
    (root / "candle/Data/Images/Anomaly/001.JPG").unlink()
    with pytest.raises(DatasetError) as err:
        index_dataset(root, "visa")
    message = str(err.value)
    assert "1cls.csv line 6" in message and "Anomaly/001.JPG" in message
    assert "does not exist" in message and "\n" not in message


def test_visa_missing_mask_bad_header_bad_label(tmp_path, data_trees):
    root = _small_visa(tmp_path, data_trees)
    (root / "candle/Data/Masks/Anomaly/000.png").unlink()
    with pytest.raises(DatasetError, match=r"line 5 is an anomaly whose mask .*000.png"):
        index_dataset(root, "visa")
    csv_path = root / "split_csv/1cls.csv"
    csv_path.write_text("object,image,label\ncandle,a.JPG,normal\n")
    with pytest.raises(DatasetError, match="header object,split,label,image,mask"):
        index_dataset(root, "visa")
    csv_path.write_text("object,split,label,image,mask\n"
                        "candle,test,broken,candle/Data/Images/Normal/0000.JPG,\n")
    with pytest.raises(DatasetError, match="line 2 has split='test', label='broken'"):
        index_dataset(root, "visa")


def test_mask_size_differs_from_image(tmp_path, data_trees):
    root = _small_visa(tmp_path, data_trees)
    big = data_trees.encode(np.ones((9, 8), np.uint8))
    (root / "candle/Data/Masks/Anomaly/000.png").write_bytes(big)
    with pytest.raises(DatasetError, match=r"Mask .*000.png is 8x9 px but its image is 8x8 px"):
        index_dataset(root, "visa")
    mtd = data_trees.mtd(tmp_path / "mtd", {"Free": 1})
    next(mtd.glob("MT_Free/Imgs/*.png")).write_bytes(data_trees.encode(np.zeros((4, 4), np.uint8)))
    with pytest.raises(DatasetError, match="is 4x4 px but its image is 8x8 px"):
        index_dataset(mtd, "mtd")


def test_corrupt_image_file(tmp_path, data_trees):
    root = data_trees.mvtec(tmp_path / "mvtec", {"bottle": (1, 2, 1, ["crack"])})
    bad = root / "bottle/test/good/000.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(DatasetError, match=f"{bad} is corrupt or not an image"):
        index_dataset(root, "mvtec")


def test_mvtec_missing_mask(tmp_path, data_trees):
    root = data_trees.mvtec(tmp_path / "mvtec", {"bottle": (1, 2, 1, ["crack"])})
    (root / "bottle/ground_truth/crack/000_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"000_mask.png of the defective image .*000.png"):
        index_dataset(root, "mvtec")


def test_ksdd2_and_mtd_missing_masks(tmp_path, data_trees):
    ksdd2 = data_trees.ksdd2(tmp_path / "k", {"train": (2, 1), "test": (2, 1)})
    (ksdd2 / "test/20001_GT.png").unlink()
    with pytest.raises(DatasetError, match="20001_GT.png of .*20001.png is missing"):
        index_dataset(ksdd2, "ksdd2")
    mtd = data_trees.mtd(tmp_path / "m", {"Crack": 1})
    next(mtd.glob("MT_Crack/Imgs/*.png")).unlink()
    with pytest.raises(DatasetError, match="MTD keeps <stem>.png beside <stem>.jpg"):
        index_dataset(mtd, "mtd")


# -- CLI -----------------------------------------------------------------------------------
def test_cli_index_writes_meta(tmp_path, data_trees, capsys):
    root = data_trees.ksdd2(tmp_path / "k", {"train": (3, 1), "test": (2, 1)})
    assert cli.main(["index", "--dataset", "ksdd2", "--root", str(root)]) == 0
    assert json.loads((root / "meta.json").read_text())["test"]["ksdd2"][0]["variant"] == \
        "official"
    out = tmp_path / "peer.json"
    assert cli.main(["index", "--dataset", "ksdd2", "--root", str(root), "--split", "train",
                     "--out", str(out)]) == 0
    assert len(json.loads(out.read_text())["test"]["ksdd2"]) == 3
    assert cli.main(["index", "--dataset", "ksdd2", "--root", str(root), "--split", "train"]) == 0
    assert json.loads((root / "meta_peer.json").read_text())["test"]["ksdd2"][0]["variant"] == \
        "peer_compatible"
    assert "peer.json" in capsys.readouterr().out


@pytest.mark.parametrize("make_bad", ["missing", "wrong_layout", "corrupt"])
def test_cli_index_bad_input_is_one_line_exit_2(tmp_path, data_trees, capsys, make_bad):
    root = data_trees.mvtec(tmp_path / "mvtec", {"bottle": (1, 2, 1, ["crack"])})
    dataset = "mvtec"
    if make_bad == "missing":
        shutil.rmtree(root)
    elif make_bad == "wrong_layout":
        dataset = "visa"
    else:
        (root / "bottle/train/good/000.png").write_bytes(b"\x89PNG broken")
    assert cli.main(["index", "--dataset", dataset, "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("clipsam index: error:")
    assert str(root) in err
