"""The embedded benchmark: layouts, counts, exact masks, determinism, safe rebuilds."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsam_lib import cli
from clipsam_lib.config import load_profile
from clipsam_lib.data import DatasetError, index_dataset, records
from clipsam_lib.data import synthetic as syn
from clipsam_lib.data.io import read_image_rgb, read_mask
from clipsam_lib.data.summary import counts_table, prepare_datasets, sample_figure


def _tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root, computed here (not read from the manifest)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny")
    return {layout: syn.build_dataset(base / layout, layout, seed=3, scale="tiny")
            for layout in ("mvtec", "visa")}


def test_same_seed_gives_byte_identical_files(tiny, tmp_path):
    for layout, root in tiny.items():
        again = syn.build_dataset(tmp_path / layout, layout, seed=3, scale="tiny")
        assert _tree_hashes(again) == _tree_hashes(root)
    other = syn.build_dataset(tmp_path / "seed4", "mvtec", seed=4, scale="tiny")
    differ = [k for k, v in _tree_hashes(other).items()
              if k.endswith(".png") and _tree_hashes(tiny["mvtec"]).get(k) != v]
    assert len(differ) > 10


def test_tiny_counts_and_layouts(tiny):
    scale = syn.SCALES["tiny"]
    for layout, root in tiny.items():
        index = index_dataset(root, layout)
        assert len(index["test"]) == scale.classes
        for recs in index["test"].values():
            assert sum(r["anomaly"] == 0 for r in recs) == scale.test_good
            assert sum(r["anomaly"] for r in recs) == scale.test_defective
        assert all(len(v) == scale.train for v in index["train"].values())
        assert json.loads((root / "meta.json").read_text()) == index
    mvtec, visa = (index_dataset(tiny[k], k) for k in ("mvtec", "visa"))
    assert not set(mvtec["test"]) & set(visa["test"])  # zero-shot: no shared class


def test_small_scale_matches_the_smoke_budget(tmp_path):
    root = syn.build_dataset(tmp_path / "visa", "visa", seed=0, scale="small")
    index = index_dataset(root, "visa")
    assert len(index["test"]) == 4
    for cls, recs in index["test"].items():
        assert (sum(r["anomaly"] == 0 for r in recs), sum(r["anomaly"] for r in recs)) == (6, 10)
        assert len(index["train"][cls]) == 10
    with (root / "split_csv" / "1cls.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["object", "split", "label", "image", "mask"] and len(rows) == 1 + 4 * 26


def test_mvtec_layout_details(tiny):
    root = tiny["mvtec"]
    index = index_dataset(root, "mvtec")
    gray = [c.name for c in syn.CATALOG["mvtec"][:2] if c.grayscale]
    assert gray, "the MVTec-layout benchmark needs a single-channel class"
    first = root / index["train"][gray[0]][0]["img_path"]
    assert Image.open(first).mode == "L" and read_image_rgb(first).shape[2] == 3
    for rec in records(index):
        assert rec["img_path"].endswith(".png")
        assert rec["width"] != rec["height"] and 180 <= min(rec["width"], rec["height"])
        assert max(rec["width"], rec["height"]) <= 320
        if rec["anomaly"]:
            values = np.unique(np.asarray(Image.open(root / rec["mask_path"])))
            assert values.tolist() == [0, 255]
            assert rec["mask_path"].endswith(f"/ground_truth/{rec['specie_name']}/"
                                             f"{Path(rec['img_path']).stem}_mask.png")


def test_visa_layout_details(tiny):
    root = tiny["visa"]
    index = index_dataset(root, "visa")
    modes, sizes = set(), set()
    for rec in records(index):
        assert rec["img_path"].endswith(".JPG") and "/Data/Images/" in rec["img_path"]
        sizes.add((rec["width"], rec["height"]))
        if rec["anomaly"]:
            mask = Image.open(root / rec["mask_path"])
            modes.add(mask.mode)
            cls = next(c for c in syn.CATALOG["visa"] if c.name == rec["cls_name"])
            values = set(np.unique(np.asarray(mask)).tolist())
            assert values - {0} and values - {0} <= set(range(1, len(cls.defects) + 1))
            assert read_mask(root / rec["mask_path"]).any()
    assert modes == {"L", "P"}  # one class writes palette masks
    assert len(sizes) > 5  # VisA-like: sizes vary from image to image


@pytest.mark.parametrize("layout", ["mvtec", "visa", "mtd", "ksdd2"])
def test_defects_change_only_their_mask_and_are_visible(layout):
    """Regenerate a defective image without its defect: every changed pixel is masked."""
    for cls in syn.CATALOG[layout]:
        for i, defect in enumerate(syn._defect_plan(cls, len(cls.defects) * 2)):
            rng = syn._rng(0, layout, cls.name, "defect", i)
            clean = syn._variation(syn._base_picture(cls), syn._image_size(cls, layout, rng),
                                   cls.kind, rng)
            damaged, mask = syn.defect_procedure(defect)(clean.copy(), cls.kind, rng)
            changed = np.abs(damaged - clean).max(axis=2) > 0
            assert not (changed & ~mask).any(), (cls.name, defect)
            assert 20 <= mask.sum() <= 0.2 * mask.size, (cls.name, defect)
            visible = np.abs(damaged - clean).mean(axis=2)[mask].mean()
            assert visible > 0.06, (cls.name, defect, visible)


def test_rebuild_is_a_no_op_when_up_to_date_and_repairs_tampering(tmp_path):
    root = syn.build_dataset(tmp_path / "m", "mvtec", seed=1, scale="tiny")
    before = _tree_hashes(root)
    stamp = (root / "brick/train/good/000.png").stat().st_mtime_ns
    syn.build_dataset(root, "mvtec", seed=1, scale="tiny")
    assert (root / "brick/train/good/000.png").stat().st_mtime_ns == stamp
    (root / "brick/train/good/000.png").write_bytes(b"tampered")
    syn.build_dataset(root, "mvtec", seed=1, scale="tiny")
    assert _tree_hashes(root) == before
    syn.build_dataset(root, "mvtec", seed=2, scale="tiny")  # another seed: rebuilt
    assert json.loads((root / syn.MANIFEST_NAME).read_text())["seed"] == 2


def test_interrupted_build_leaves_the_old_tree(tmp_path, monkeypatch):
    root = syn.build_dataset(tmp_path / "v", "visa", seed=1, scale="tiny")
    before = _tree_hashes(root)

    def crash(staging, *args):
        (staging / "half_written.JPG").write_bytes(b"...")
        raise KeyboardInterrupt

    monkeypatch.setitem(syn.WRITERS, "visa", crash)
    with pytest.raises(KeyboardInterrupt):
        syn.build_dataset(root, "visa", seed=2, scale="tiny")
    assert _tree_hashes(root) == before
    assert [p.name for p in tmp_path.iterdir()] == ["v"]  # no temporary folder left


def test_refuses_to_replace_foreign_data(tmp_path):
    root = tmp_path / "real"
    (root / "bottle").mkdir(parents=True)
    with pytest.raises(DatasetError, match="was not built by the synthetic generator"):
        syn.build_dataset(root, "mvtec", scale="tiny")
    assert (root / "bottle").is_dir()
    with pytest.raises(DatasetError, match="mvtec, visa, mtd, ksdd2 layouts, not 'coco'"):
        syn.build_dataset(tmp_path / "x", "coco")
    with pytest.raises(DatasetError, match="scale 'huge' is unknown"):
        syn.build_dataset(tmp_path / "x", "mvtec", scale="huge")


def test_build_embedded_benchmark_and_cli(tmp_path, capsys):
    profile = load_profile("smoke", data_dir=str(tmp_path), synthetic_scale="tiny")
    roots = syn.build_embedded_benchmark(profile)
    names = ["synth_mvtec", "synth_visa", "synth_mtd", "synth_ksdd2"]
    assert roots == {name: tmp_path / name for name in names}
    yaml_profile = tmp_path / "p.yaml"
    yaml_profile.write_text(f"data_dir: {tmp_path}\nsynthetic_scale: tiny\ndatasets:\n"
                            "  - {name: s, layout: mvtec, root: cli_built, synthetic: true}\n")
    assert cli.main(["build-benchmark", "--profile", str(yaml_profile)]) == 0
    assert (tmp_path / "cli_built" / "meta.json").is_file()
    assert "cli_built" in capsys.readouterr().out


def test_summary_table_and_figure(tiny, tmp_path):
    indexes = {f"synth_{k}": index_dataset(root, k) for k, root in tiny.items()}
    table = counts_table(indexes)
    assert len(table) == 4 and set(table["test anomalous"]) == {3}
    assert table["train"].sum() == 4 * syn.SCALES["tiny"].train
    brick = table[table["class"] == "brick"].iloc[0]
    assert brick["width (px)"] == "288" and brick["defect types"] == "patch, pit, scratch"
    out = sample_figure({k: (tiny[k.split("_")[1]], v) for k, v in indexes.items()},
                        tmp_path / "fig.png")
    assert Image.open(out).size[0] > 300


def test_prepare_datasets_builds_indexes_and_selects_classes(tmp_path, data_trees):
    data_trees.ksdd2(tmp_path / "KolektorSDD2", {"train": (3, 1), "test": (2, 1)})
    profile = load_profile("smoke", data_dir=str(tmp_path), synthetic_scale="tiny")
    profile.datasets[1].classes = ["coins"]
    profile.datasets.append(type(profile.datasets[0])(
        name="ksdd2_peer", layout="ksdd2", root="KolektorSDD2", split="train"))
    prepared = prepare_datasets(profile)
    assert list(prepared) == ["synth_mvtec", "synth_visa", "synth_mtd", "synth_ksdd2",
                              "ksdd2_peer"]
    assert list(prepared["synth_visa"][1]["test"]) == ["coins"]
    assert len(prepared["ksdd2_peer"][1]["test"]["ksdd2"]) == 3
    assert (tmp_path / "KolektorSDD2" / "meta_peer.json").is_file()
    assert (tmp_path / "synth_mvtec" / "meta.json").is_file()
    profile.datasets.append(type(profile.datasets[0])(name="mvtec", layout="mvtec", root="absent"))
    with pytest.raises(DatasetError, match="absent does not exist; download it with `clipsam"):
        prepare_datasets(profile)
    profile.datasets[1].classes = ["gear"]
    with pytest.raises(DatasetError, match="gear are not in the test split"):
        prepare_datasets(profile)


# -- the generalization sets: MTD and KSDD2 layouts -----------------------------------------
@pytest.fixture(scope="module")
def flat_sets(tmp_path_factory):
    """The MTD and KSDD2 layouts at the smoke profile's scale (about a second)."""
    base = tmp_path_factory.mktemp("flat")
    return {layout: syn.build_dataset(base / layout, layout, seed=0, scale="small")
            for layout in ("mtd", "ksdd2")}


def test_mtd_tree_indexes_with_the_real_indexer(flat_sets):
    root = flat_sets["mtd"]
    index = index_dataset(root, "mtd")
    assert index["train"] == {} and list(index["test"]) == ["mtd"]
    assert json.loads((root / "meta.json").read_text()) == index
    recs = index["test"]["mtd"]
    assert Counter(r["specie_name"] for r in recs) == {
        "": 6, "blowhole": 2, "break": 2, "crack": 2, "fray": 2, "uneven": 2}
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert folders == ["MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Free", "MT_Uneven"]
    for rec in recs:
        image = root / rec["img_path"]
        assert image.suffix == ".jpg" and Image.open(image).mode == "L"
        assert rec["width"] != rec["height"]
        assert 160 <= min(rec["width"], rec["height"]) <= max(rec["width"], rec["height"]) <= 260
        stored_mask = np.asarray(Image.open(image.with_suffix(".png")))  # Free ones too
        assert (stored_mask.max() > 0) == bool(rec["anomaly"])
        assert rec["img_path"].startswith("MT_Free/") == (not rec["anomaly"])
    assert len({(r["width"], r["height"]) for r in recs}) > 8  # sizes vary


def test_mtd_masks_are_antialiased_and_cover_every_defect_pixel(flat_sets):
    root = flat_sets["mtd"]
    for rec in records(index_dataset(root, "mtd")):
        if rec["anomaly"]:
            stored = np.asarray(Image.open(root / rec["mask_path"]))
            assert ((stored > 0) & (stored < 255)).any(), rec["mask_path"]
    # The stored mask of each defective image is its exact mask, blurred: > 0 keeps every
    # defect pixel, and a higher threshold keeps fewer pixels (the threshold matters).
    cls, scale = syn.CATALOG["mtd"][0], syn.SCALES["small"]
    for i, defect in enumerate(syn._defect_plan(cls, scale.test_defective)):
        sample = syn._make_sample(cls, "mtd", 0, "defect", i, defect)
        stored_path = root / f"MT_{defect}/Imgs/exp1_num_{scale.test_good + i:05d}.png"
        stored = np.asarray(Image.open(stored_path))
        assert np.array_equal(stored, syn._antialiased_mask(sample))
        assert (stored[sample.mask] > 0).all()
        assert (stored > 127).sum() < (stored > 0).sum()
        assert read_mask(stored_path, 127).sum() < read_mask(stored_path, 0).sum()


def test_ksdd2_tree_indexes_with_the_real_indexer(flat_sets):
    root = flat_sets["ksdd2"]
    official = index_dataset(root, "ksdd2", split="test")
    peer = index_dataset(root, "ksdd2", split="train")
    assert json.loads((root / "meta.json").read_text()) == official

    def counts(recs):
        return len(recs), sum(r["anomaly"] for r in recs)

    assert counts(official["test"]["ksdd2"]) == (16, 6)
    assert counts(official["train"]["ksdd2"]) == (16, 4)
    assert counts(peer["test"]["ksdd2"]) == (16, 4) and peer["train"] == {}
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["test", "train"]
    for rec in records(official, "train") + records(official, "test"):
        assert re.fullmatch(r"(train|test)/\d{5}\.png", rec["img_path"])
        assert Image.open(root / rec["img_path"]).mode == "RGB"
        assert 80 <= rec["width"] <= 110 and 220 <= rec["height"] <= 300
        gt = np.asarray(Image.open(root / rec["img_path"].replace(".png", "_GT.png")))
        assert set(np.unique(gt).tolist()) == ({0, 255} if rec["anomaly"] else {0})
    labels = [r["anomaly"] for r in official["test"]["ksdd2"]]
    assert labels != sorted(labels)  # defective images sit among the normal ones


def test_new_layouts_are_deterministic_and_idempotent(flat_sets, tmp_path):
    for layout, root in flat_sets.items():
        again = syn.build_dataset(tmp_path / layout, layout, seed=0, scale="small")
        assert _tree_hashes(again) == _tree_hashes(root)
        assert syn.is_up_to_date(again, layout, 0, "small")
        first = next(again.rglob("*.png"))
        stamp = first.stat().st_mtime_ns
        syn.build_dataset(again, layout, seed=0, scale="small")
        assert first.stat().st_mtime_ns == stamp  # up to date: nothing rewritten
    other = syn.build_dataset(tmp_path / "seed1", "ksdd2", seed=1, scale="small")
    assert _tree_hashes(other) != _tree_hashes(flat_sets["ksdd2"])


def test_summary_covers_the_generalization_sets(flat_sets):
    indexes = {layout: index_dataset(root, layout) for layout, root in flat_sets.items()}
    table = counts_table(indexes)
    rows = {row["class"]: row for row in table.to_dict("records")}
    assert (rows["mtd"]["train"], rows["mtd"]["test normal"], rows["mtd"]["test anomalous"]) \
        == (0, 6, 10)
    assert rows["mtd"]["defect types"] == "blowhole, break, crack, fray, uneven"
    assert (rows["ksdd2"]["train"], rows["ksdd2"]["test anomalous"]) == (16, 6)
