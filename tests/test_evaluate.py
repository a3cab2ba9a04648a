"""Evaluation protocols on tiny on-disk datasets built in tmp_path.

References are independent: scikit-learn on hand-pooled pixels, torch's bilinear
interpolation, torchvision's PIL pipeline (the peers' mask transform), numpy means.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from PIL import Image
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score
from torchvision import transforms

from clipsam_lib.config import EvalConfig
from clipsam_lib.evaluate import (
    PROTOCOL_COLUMNS,
    evaluate_maps,
    export_mvtec_tiffs,
    macro_mean,
    resize_mask_peer,
)

S = 16  # working resolution of these tests


def _png(path, array, palette=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array.astype(np.uint8))
    if palette:  # VisA-style: indices whose palette colours are all black
        image = image.convert("P")
        image.putpalette([0, 0, 0] * 256)
        image.putdata(array.ravel().tolist())
    image.save(path)


def _record(cls, img, mask="", anomaly=0, specie="", width=S, height=S):
    return {"img_path": img, "mask_path": mask, "cls_name": cls, "specie_name": specie,
            "anomaly": anomaly, "width": width, "height": height}


@pytest.fixture
def mvtec_like(tmp_path):
    """Class "bottle": 2 good + 2 defective images at S x S, masks 0/255; maps at S x S."""
    rng = np.random.default_rng(0)
    records, maps, masks = [], {}, {}
    for i, (defect, box) in enumerate([("good", None), ("good", None),
                                       ("broken", (2, 7, 3, 9)), ("crack", (9, 14, 1, 4))]):
        img = f"bottle/test/{defect}/{i:03d}.png"
        _png(tmp_path / img, rng.integers(0, 255, (S, S, 3)))
        mask = np.zeros((S, S), dtype=bool)
        mask_path = ""
        if box:
            r0, r1, c0, c1 = box
            mask[r0:r1, c0:c1] = True
            mask_path = f"bottle/ground_truth/{defect}/{i:03d}_mask.png"
            _png(tmp_path / mask_path, mask * 255)
        records.append(_record("bottle", img, mask_path, int(bool(box)),
                               "" if defect == "good" else defect))
        maps[img] = (rng.random((S, S)) + 0.8 * mask).astype(np.float32)
        masks[img] = mask
    return tmp_path, records, maps, masks


@pytest.fixture
def visa_like(tmp_path):
    """Class "pcb1": palette masks holding class indices 1 and 2 (they look black)."""
    rng = np.random.default_rng(1)
    records, maps, masks = [], {}, {}
    for i in range(3):
        img = f"pcb1/Data/Images/{'Anomaly' if i else 'Normal'}/{i:03d}.JPG"
        mask = np.zeros((S, S), dtype=np.uint8)
        mask_path = ""
        if i:
            mask[3:8, 4:10] = 1
            mask[11:14, 11:15] = 2
            mask_path = f"pcb1/Data/Masks/Anomaly/{i:03d}.png"
            _png(tmp_path / mask_path, mask, palette=True)
        records.append(_record("pcb1", img, mask_path, int(i > 0)))
        maps[img] = (rng.random((S, S)) + 0.5 * (mask > 0)).astype(np.float32)
        masks[img] = mask > 0
    return tmp_path, records, maps, masks


def _pooled_reference(records, maps, masks):
    y = np.concatenate([masks[r["img_path"]].ravel() for r in records])
    s = np.concatenate([maps[r["img_path"]].ravel() for r in records])
    labels = [r["anomaly"] for r in records]
    image_scores = [maps[r["img_path"]].max() for r in records]
    return y, s, labels, image_scores


def test_peer_protocol_pools_pixels_of_all_images(mvtec_like):
    root, records, maps, masks = mvtec_like
    table = evaluate_maps(records, root, lambda r: maps[r["img_path"]], EvalConfig(image_score="map_max"), S, "mv")
    assert len(table) == 1
    row = table.iloc[0]
    y, s, labels, image_scores = _pooled_reference(records, maps, masks)
    assert abs(row.pixel_auroc - roc_auc_score(y, s)) < 1e-9
    assert abs(row.pixel_ap - average_precision_score(y, s)) < 1e-9
    assert abs(row.image_auroc - roc_auc_score(labels, image_scores)) < 1e-9
    assert row.pixel_pro == row.pixel_pro_linear200
    assert 0 < row.pixel_pro_mvtec <= 1
    assert (row.n_images, row.n_anomalous, row.note) == (4, 2, "")


def test_protocol_columns_are_recorded(mvtec_like):
    root, records, maps, _ = mvtec_like
    cfg = EvalConfig(image_score="map_max", protocol="peer", sigma=0.0, pro_variant="mvtec", mask_threshold=0.0)
    table = evaluate_maps(records, root, lambda r: maps[r["img_path"]], cfg, S, "mv",
                          extra_columns={"profile": "test"})
    row = table.iloc[0]
    assert row.protocol == "peer" and row.resolution == f"{S}x{S}"
    assert row.pro_variant == "mvtec" and row.pixel_pro == row.pixel_pro_mvtec
    assert (row.sigma, row.mask_threshold, row.fpr_limit) == (0.0, 0.0, 0.3)
    assert row.dataset == "mv" and row.profile == "test"
    assert set(PROTOCOL_COLUMNS) <= set(table.columns)


def test_visa_class_index_palette_masks_are_read_raw(visa_like):
    root, records, maps, masks = visa_like
    raw = EvalConfig(image_score="map_max", mask_binarization="raw")
    table = evaluate_maps(records, root, lambda r: maps[r["img_path"]], raw, S, "visa")
    y, s, _, _ = _pooled_reference(records, maps, masks)
    assert y.sum() == 2 * (5 * 6 + 3 * 4)  # both index values count as defect
    assert abs(table.iloc[0].pixel_auroc - roc_auc_score(y, s)) < 1e-9


def test_per_class_macro_mean_leaves_nan_out_and_says_so(mvtec_like, visa_like, tmp_path):
    _, mv_records, mv_maps, _ = mvtec_like
    _, visa_records, visa_maps, _ = visa_like
    rng = np.random.default_rng(2)
    normal_only = [_record("empty", f"empty/test/good/{i}.png") for i in range(2)]
    all_maps = {**mv_maps, **visa_maps, **{r["img_path"]: rng.random((S, S)) for r in normal_only}}
    records = mv_records + visa_records + normal_only
    with pytest.warns(UserWarning, match="no anomalous"):
        table = evaluate_maps(records, tmp_path, lambda r: all_maps[r["img_path"]],
                              EvalConfig(image_score="map_max", mask_binarization="raw"), S,
                              "mixed")
    assert table.cls_name.tolist() == ["bottle", "pcb1", "empty"]
    empty = table.set_index("cls_name").loc["empty"]
    assert np.isnan(empty.pixel_auroc) and np.isnan(empty.pixel_pro)
    assert "no anomalous pixel" in empty.note
    with pytest.warns(UserWarning, match="NaN left out: empty"):
        mean = macro_mean(table)
    assert len(mean) == 1 and mean.iloc[0].cls_name == "mean"
    expected = np.mean(table.pixel_auroc.iloc[:2].to_numpy())  # the two defined classes
    assert abs(mean.iloc[0].pixel_auroc - expected) < 1e-12
    assert "pixel_auroc: mean of 2/3 classes" in mean.iloc[0].note
    assert mean.iloc[0].n_images == table.n_images.sum()
    assert mean.iloc[0].protocol == "peer"


def test_macro_mean_refuses_to_mix_protocols(mvtec_like):
    root, records, maps, _ = mvtec_like
    get_map = lambda r: maps[r["img_path"]]
    peer = evaluate_maps(records, root, get_map, EvalConfig(image_score="map_max", protocol="peer"), S, "mv")
    mvtec = evaluate_maps(records, root, get_map, EvalConfig(image_score="map_max", protocol="mvtec"), S, "mv")
    with pytest.raises(ValueError, match="mix evaluation settings"):
        macro_mean(pd.concat([peer, mvtec]))


def test_peer_mask_resize_equals_torchvision_pipeline():
    rng = np.random.default_rng(3)
    mask = ndimage.binary_dilation(rng.random((30, 40)) < 0.03, iterations=2)
    # APRIL-GAN: PIL 'L' 0/255 -> Resize((S, S)) -> ToTensor -> > 0.5
    pipeline = transforms.Compose([transforms.Resize((S, S)), transforms.ToTensor()])
    reference = pipeline(Image.fromarray(mask.astype(np.uint8) * 255))[0].numpy() > 0.5
    np.testing.assert_array_equal(resize_mask_peer(mask, S), reference)


def test_peer_protocol_resizes_maps_and_masks(tmp_path):
    """Original 40 x 30 masks and 8 x 8 maps are both brought to S x S."""
    rng = np.random.default_rng(4)
    mask = np.zeros((30, 40), dtype=bool)
    mask[5:20, 10:30] = True
    _png(tmp_path / "c/m.png", mask * 255)
    records = [_record("c", "c/a.png", "c/m.png", 1, "x", width=40, height=30),
               _record("c", "c/b.png", width=40, height=30)]
    small = {r["img_path"]: rng.random((8, 8)).astype(np.float32) for r in records}
    table = evaluate_maps(records, tmp_path, lambda r: small[r["img_path"]], EvalConfig(image_score="map_max"), S, "c")

    def upsample(a):  # bilinear, half-pixel centres (torch as the independent reference)
        return torch.nn.functional.interpolate(
            torch.from_numpy(a)[None, None], size=(S, S), mode="bilinear", align_corners=False
        )[0, 0].numpy()

    pipeline = transforms.Compose([transforms.Resize((S, S)), transforms.ToTensor()])
    gt = pipeline(Image.fromarray(mask.astype(np.uint8) * 255))[0].numpy() > 0.5
    y = np.r_[gt.ravel(), np.zeros(S * S, bool)]
    s = np.r_[upsample(small["c/a.png"]).ravel(), upsample(small["c/b.png"]).ravel()]
    assert abs(table.iloc[0].pixel_auroc - roc_auc_score(y, s)) < 1e-6
    assert abs(table.iloc[0].pixel_ap - average_precision_score(y, s)) < 1e-6


def test_mvtec_protocol_evaluates_at_original_resolution(tmp_path):
    rng = np.random.default_rng(5)
    mask = np.zeros((24, 32), dtype=bool)
    mask[3:9, 4:20] = True
    _png(tmp_path / "c/m.png", mask * 255)
    records = [_record("c", "c/a.png", "c/m.png", 1, "x", width=32, height=24),
               _record("c", "c/b.png", width=32, height=24)]
    at_s = {r["img_path"]: rng.random((8, 8)).astype(np.float32) for r in records}
    cfg = EvalConfig(image_score="map_max", protocol="mvtec")
    table = evaluate_maps(records, tmp_path, lambda r: at_s[r["img_path"]], cfg, 8, "c")
    row = table.iloc[0]
    assert row.resolution == "original" and row.pro_variant == "mvtec"
    up = [torch.nn.functional.interpolate(torch.from_numpy(at_s[r["img_path"]])[None, None],
                                          size=(24, 32), mode="bilinear", align_corners=False)
          [0, 0].numpy() for r in records]
    y = np.r_[mask.ravel(), np.zeros(mask.size, bool)]
    s = np.r_[up[0].ravel(), up[1].ravel()]
    assert abs(row.pixel_auroc - roc_auc_score(y, s)) < 1e-6
    assert row.pixel_pro == row.pixel_pro_mvtec


def test_sigma_smooths_the_maps_before_the_image_score(mvtec_like):
    root, records, maps, _ = mvtec_like
    get_map = lambda r: maps[r["img_path"]]
    table = evaluate_maps(records, root, get_map, EvalConfig(image_score="map_max", sigma=2.0), S, "mv")
    smoothed = [ndimage.gaussian_filter(maps[r["img_path"]], 2.0).max() for r in records]
    labels = [r["anomaly"] for r in records]
    assert abs(table.iloc[0].image_auroc - roc_auc_score(labels, smoothed)) < 1e-9
    assert table.iloc[0].sigma == 2.0


def test_export_mvtec_tiffs_layout_and_values(mvtec_like, tmp_path):
    _, records, maps, _ = mvtec_like
    records = [dict(r, width=12, height=10) for r in records]  # original size != S
    out = tmp_path / "anomaly_maps"
    written = export_mvtec_tiffs(records, lambda r: maps[r["img_path"]], out, image_size=S)
    expected = {out / "bottle/test/good/000.tiff", out / "bottle/test/good/001.tiff",
                out / "bottle/test/broken/002.tiff", out / "bottle/test/crack/003.tiff"}
    assert set(written) == expected
    assert {p for p in out.rglob("*") if p.is_file()} == expected  # no temp files left
    for rec, path in zip(records, written):
        stored = tifffile.imread(path)
        assert stored.dtype == np.float32 and stored.shape == (10, 12)
        reference = torch.nn.functional.interpolate(
            torch.from_numpy(maps[rec["img_path"]])[None, None], size=(10, 12),
            mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()
        np.testing.assert_allclose(stored, reference, atol=1e-5)


def test_missing_or_mismatched_mask_is_a_clear_error(mvtec_like):
    root, records, maps, _ = mvtec_like
    get_map = lambda r: maps[r["img_path"]]
    missing = [dict(records[2], mask_path="bottle/ground_truth/broken/999_mask.png")]
    with pytest.raises(ValueError, match="999_mask.png"):
        evaluate_maps(missing, root, get_map, EvalConfig(image_score="map_max"), S, "mv")
    wrong_size = [dict(records[2], width=S + 1)]
    with pytest.raises(ValueError, match="002_mask.png"):
        evaluate_maps(wrong_size, root, get_map, EvalConfig(image_score="map_max"), S, "mv")
    other_threshold = [dict(records[2], mask_threshold=127)]
    with pytest.raises(ValueError, match="mask_threshold"):
        evaluate_maps(other_threshold, root, get_map, EvalConfig(image_score="map_max"), S, "mv")
    with pytest.raises(ValueError, match="protocol"):
        evaluate_maps(records, root, get_map, EvalConfig(image_score="map_max", protocol="loco"), S, "mv")
