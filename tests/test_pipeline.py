"""ClipSAMPredictor and run_dataset on a toy dataset with the smoke profile's tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipsam_lib import pipeline
from clipsam_lib.config import MMRConfig, load_profile
from clipsam_lib.errors import UserError
from clipsam_lib.modeling import BACKBONE_BUILDS, mmr
from clipsam_lib.modeling.clip_backbone import ClipBackbone
from clipsam_lib.modeling.sam_backbone import SamBackbone
from clipsam_lib.pipeline import ClipSAMPredictor, run_dataset
from clipsam_lib.train import init_umci

SIZES = [(60, 90), (80, 64), (72, 72)]  # (h, w): non-square on both sides


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in SIZES]


@pytest.fixture()
def toy(tmp_path):
    """Profile (data/cache/results under tmp_path), records and images of a toy dataset."""
    records = []
    for i, image in enumerate(_images()):
        rel = f"widget/test/good/{i:03d}.png"
        (tmp_path / "data" / "toy" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "data" / "toy" / rel)
        records.append({"img_path": rel, "mask_path": "", "cls_name": "widget",
                        "specie_name": "good", "anomaly": 0,
                        "width": image.shape[1], "height": image.shape[0]})
    profile = load_profile(
        "smoke",
        data_dir=str(tmp_path / "data"),
        cache_dir=str(tmp_path / "cache"),
        results_dir=str(tmp_path / "results"),
        datasets=[{"name": "toy", "layout": "mvtec", "root": "toy"}],
        directions=[],
        **{"mmr.max_regions": 3},  # a random UMCI binarizes into many regions: keep it fast
    )
    return profile, records, _images()


def _with_regions(profile, umci, image):
    """The profile with theta at the rough map's 80th percentile, so MMR has prompts."""
    rough = ClipSAMPredictor(profile.replace(**{"mmr.enabled": False}), umci,
                             use_cache=False).predict(image, "widget").rough_map
    return profile.replace(**{"mmr.threshold": float(np.quantile(rough, 0.8))})


@pytest.mark.slow
def test_predictor_composes_the_backbones_umci_and_mmr(toy):
    profile, _, images = toy
    umci = init_umci(profile)
    profile = _with_regions(profile, umci, images[0])
    predictor = ClipSAMPredictor(profile, umci, use_cache=False)
    out = predictor.predict(images[0], "widget")

    # Reference: the same pieces called by hand.
    clip = ClipBackbone(profile.clip)
    tokens = [t[None] for t in clip.image_tokens(images[0])]
    text = clip.text_features(["widget"])
    with torch.no_grad():
        rough = umci(tokens, text, profile.clip.image_size).rough_map[0].numpy()
    sam = SamBackbone(profile.sam)
    reference = mmr.refine(sam.model, sam.embed(images[0]), rough, profile.mmr)

    np.testing.assert_allclose(out.rough_map, rough, atol=1e-6)
    assert out.rough_map.shape == (224, 224)
    assert out.final_map.shape == out.clip_map.shape == SIZES[0]
    assert len(out.prompts) >= 1
    np.testing.assert_array_equal(out.prompts.boxes, reference.prompts.boxes)
    assert (out.masks != reference.masks).mean() < 1e-3
    np.testing.assert_allclose(out.final_map, reference.final_map, atol=1e-5)
    assert 0.0 <= out.final_map.min() and out.final_map.max() <= 1.0


@pytest.mark.slow
def test_set_image_once_predict_many_classes(toy, monkeypatch):
    profile, _, images = toy
    predictor = ClipSAMPredictor(profile, init_umci(profile), use_cache=False)
    predictor.set_image(images[1])
    monkeypatch.setattr(SamBackbone, "embed", lambda *a: pytest.fail("SAM encoder re-ran"))
    a, b = predictor.predict("widget"), predictor.predict("gadget")
    assert a.final_map.shape == b.final_map.shape == SIZES[1]
    assert not np.allclose(a.rough_map, b.rough_map)  # the class text matters


def test_predict_before_set_image_is_an_error(toy):
    profile, _, _ = toy
    with pytest.raises(RuntimeError, match="set_image"):
        ClipSAMPredictor(profile, init_umci(profile), use_cache=False).predict("widget")


@pytest.mark.slow
def test_cached_predictor_never_reruns_the_backbones(toy, monkeypatch):
    profile, _, images = toy
    umci = init_umci(profile)
    first = ClipSAMPredictor(profile, umci).predict(images[2], "widget")

    def fail(*args, **kwargs):
        raise AssertionError("a backbone ran although its output is cached")

    monkeypatch.setattr(ClipBackbone, "__init__", fail)
    monkeypatch.setattr(SamBackbone, "embed", fail)
    again = ClipSAMPredictor(profile, umci).predict(images[2], "widget")
    np.testing.assert_array_equal(again.final_map, first.final_map)


@pytest.mark.slow
def test_run_dataset_writes_resumes_and_keys_variants(toy, monkeypatch):
    profile, records, images = toy
    umci = init_umci(profile)
    profile = _with_regions(profile, umci, images[0])
    out = Path(profile.results_dir) / "maps"

    # An interrupted run: the second map fails to finish.
    real = pipeline.final_map_of
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "final_map_of", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_dataset(profile, umci, "toy", records, out, progress=False)
    monkeypatch.setattr(pipeline, "final_map_of", real)

    maps = run_dataset(profile, umci, "toy", records, out, progress=False)
    assert maps.computed == 2  # the first map was kept, no half-written file left
    assert not list(maps.dir.rglob("*.tmp"))
    assert run_dataset(profile, umci, "toy", records, out, progress=False).computed == 0

    # A folder written before the compact format keeps serving its whole float32 maps,
    # and a missing map is completed in the new format.
    earlier, missing = maps.paths[records[0]["img_path"]], maps.paths[records[1]["img_path"]]
    computed = maps(records[0])
    np.save(earlier.with_suffix(".npy"), computed)
    earlier.unlink()
    missing.unlink()
    again = run_dataset(profile, umci, "toy", records, out, progress=False)
    assert again.dir == maps.dir and again.computed == 1
    assert again.paths[records[0]["img_path"]].suffix == ".npy"
    assert again.paths[records[1]["img_path"]] == missing and missing.is_file()
    np.testing.assert_array_equal(again(records[0]), computed)

    maps, rec, image = again, records[0], images[0]
    stored = maps(rec)
    assert stored.dtype == np.float32 and stored.shape == image.shape[:2]
    expected = ClipSAMPredictor(profile, umci).predict(image, "widget")
    # Stored as computed: the batched and the one-image paths differ by float32 rounding
    # only (measured 3e-7); float16 storage would be off by up to 2.4e-4 at these values.
    np.testing.assert_allclose(maps(rec), expected.final_map, rtol=0, atol=2e-6)
    assert maps.regions(rec) == len(expected.prompts) >= 1
    assert pipeline.read_variant(maps.dir)["config"]["mmr"] == profile.to_dict()["mmr"]


def test_a_stored_map_keeps_the_order_of_near_zero_scores(tmp_path):
    """A trained UMCI's rough map on unseen classes can sit below 1e-4 everywhere; the
    metrics rank its pixels, so storing must not merge them. Hand-built case: 4096
    distinct scores between 1e-6 and 2e-6 (float16 keeps about 17 levels there)."""
    from sklearn.metrics import roc_auc_score

    scores = (1e-6 * (1 + np.linspace(0, 1, 4096))).astype(np.float32).reshape(64, 64)
    labels = np.random.default_rng(0).random(scores.shape) < scores / scores.max() / 2
    empty = mmr.Prompts(np.zeros((0, 2), np.float32), np.zeros((0, 4), np.float32),
                        np.zeros(0, np.int64), "point+box")
    steps = mmr.MMRResult(scores, np.zeros_like(labels), empty, np.zeros((0, 3, 64, 64), bool),
                          np.zeros((0, 3), np.float32), scores)
    path = tmp_path / "map.npz"
    pipeline._save_map(path, steps, scores)
    stored = pipeline.MapSet(tmp_path, "key", {"x": path})({"img_path": "x"})
    assert len(np.unique(stored)) == scores.size
    assert roc_auc_score(labels.ravel(), stored.ravel()) == roc_auc_score(labels.ravel(),
                                                                          scores.ravel())
    assert len(np.unique(scores.astype(np.float16))) < 100  # what float16 would keep


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def test_a_stored_map_is_rebuilt_bit_for_bit_from_its_rough_map_and_changed_pixels(tmp_path):
    """Maps are stored as the S x S rough map plus the pixels MMR changed; reading one back
    gives the computed map bit for bit (NaN and -0.0 included), in a fraction of the bytes
    of float32 at the original size."""
    rng = np.random.default_rng(0)
    rough = rng.random((32, 32), dtype=np.float32) * 1e-4
    size = (120, 90)
    clip_map = mmr.upsampled_rough(rough, size)
    final = clip_map.copy()
    final[40:60, 10:30] = 0.5 * clip_map[40:60, 10:30] + 0.5 * rng.random((20, 20)) ** 3
    final[0, 0], final[1, 1], final[2, 2] = np.nan, -0.0, 1.0
    empty = mmr.Prompts(np.zeros((0, 2), np.float32), np.zeros((0, 4), np.float32),
                        np.zeros(0, np.int64), "point+box")
    steps = mmr.MMRResult(clip_map, np.zeros(size, bool), empty,
                          np.zeros((0, 3, *size), bool), np.zeros((0, 3), np.float32),
                          final.astype(np.float32))
    path = tmp_path / "a.npz"
    pipeline._save_map(path, steps, rough)
    np.testing.assert_array_equal(_bits(pipeline.read_map(path)), _bits(final))
    assert path.stat().st_size < 0.5 * final.nbytes  # 32 x 32 rough + 403 changed values

    unchanged = mmr.MMRResult(**{**vars(steps), "final_map": clip_map})
    pipeline._save_map(path, unchanged, rough)
    np.testing.assert_array_equal(_bits(pipeline.read_map(path)), _bits(clip_map))

    with np.load(path) as stored:  # a map whose rebuilding differs is refused, named
        parts = dict(stored)
    parts["rough"] = parts["rough"] * np.float32(1.001)
    with open(path, "wb") as handle:
        np.savez(handle, **parts)
    with pytest.raises(UserError, match=r"a\.npz does not rebuild .* delete its folder"):
        pipeline.read_map(path)


def test_variants_never_share_a_map_folder(toy):
    profile, records, _ = toy
    umci = init_umci(profile)
    out = Path(profile.results_dir) / "maps"

    def folder(prof=profile, weights=umci, **kwargs):  # no records: nothing is computed
        return run_dataset(prof, weights, "toy", records[:0], out, progress=False,
                           **kwargs).dir

    fusion_b = MMRConfig(**{**profile.mmr.__dict__, "fusion": "B"})
    retrained = init_umci(profile.replace(**{"train.seed": 5}))
    folders = {folder(), folder(mmr_cfg=fusion_b), folder(weights=retrained),
               folder(prof=profile.replace(**{"mmr.threshold": 0.4}))}
    assert len(folders) == 4
    assert folder(mmr_cfg=profile.mmr) == folder()  # the same variant spelled twice


def test_run_dataset_without_mmr_never_touches_sam(toy, monkeypatch):
    profile, records, _ = toy
    profile = profile.replace(**{"mmr.enabled": False})
    monkeypatch.setattr(pipeline, "extract_sam_embeddings",
                        lambda *a, **k: pytest.fail("SAM embeddings were extracted"))
    builds = BACKBONE_BUILDS["sam"]
    maps = run_dataset(profile, init_umci(profile), "toy", records,
                       Path(profile.results_dir) / "maps", progress=False)
    assert maps.computed == 3 and BACKBONE_BUILDS["sam"] == builds  # SAM never built
    rec = records[1]
    assert maps(rec).shape == (rec["height"], rec["width"])
