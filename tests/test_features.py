"""CLIP feature extraction into the cache, and the backbone-free reader."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic_defects import tiny_profile

from clipsam_lib import features, paths
from clipsam_lib.data import index_dataset, records
from clipsam_lib.features import ClipFeatureStore, extract_clip_features
from clipsam_lib.modeling.clip_backbone import ClipBackbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def profile(tmp_path):
    return tiny_profile(tmp_path)


def src_records(profile):
    return records(index_dataset(paths.dataset_root(profile, "src"), "mvtec"), "test")


def forbid_backbone(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("the CLIP backbone was built although everything is cached")

    monkeypatch.setattr(ClipBackbone, "__init__", refuse)


def test_extraction_fills_the_cache_once_and_the_reader_needs_no_backbone(profile, monkeypatch):
    recs = src_records(profile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = extract_clip_features(profile, "src", recs, progress=False)
    assert (first.images, first.computed, first.cached, first.texts_computed) == (
        len(recs),
        len(recs),
        0,
        2,
    )
    # Per image a tokens entry and a global-embedding entry; one text entry per class.
    assert first.cache_entries == 2 * len(recs) + 2 and first.cache_bytes > 0
    assert "MiB" in str(first)

    forbid_backbone(monkeypatch)
    second = extract_clip_features(profile, "src", recs, progress=False)
    assert (second.computed, second.cached, second.texts_computed) == (0, len(recs), 0)
    store = ClipFeatureStore(profile)
    tokens = store.tokens("src", recs[0])
    assert [t.shape for t in tokens] == [(64, 64)] * 4 and tokens[0].dtype == torch.float32
    assert store.text(["felt", "moss"]).shape == (2, 2, 64)


def test_cached_values_equal_a_direct_backbone_pass(profile):
    recs = src_records(profile)[:3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extract_clip_features(profile, "src", recs, progress=False)
        clip = ClipBackbone(profile.clip)
    store = ClipFeatureStore(profile)
    root = paths.dataset_root(profile, "src")
    for rec in recs:
        direct = clip.image_tokens(features.read_rgb(root / rec["img_path"]))
        for cached, reference in zip(store.tokens("src", rec), direct):
            # fp16 storage: relative error of half precision
            assert torch.allclose(cached, reference, rtol=2e-3, atol=2e-3)
    text = store.text(["felt"])
    assert torch.allclose(text, clip.text_features(["felt"]), atol=2e-3)
    assert torch.allclose(text.norm(dim=-1), torch.ones(1, 2), atol=1e-5)


def test_a_changed_image_is_noticed_and_asks_for_extraction(profile):
    recs = src_records(profile)[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extract_clip_features(profile, "src", recs, progress=False)
    path = paths.dataset_root(profile, "src") / recs[0]["img_path"]
    image = features.read_rgb(path)
    time.sleep(0.01)
    Image.fromarray(255 - image).save(path)
    store = ClipFeatureStore(profile)
    with pytest.raises(KeyError, match="extract_clip_features"):
        store.tokens("src", recs[0])
    assert len(store.tokens("src", recs[1])) == 4


def test_keys_depend_on_resolution_and_dtype(profile):
    base = ClipFeatureStore(profile)
    other_size = ClipFeatureStore(profile.replace(**{"clip.image_size": 224}))
    other_dtype = ClipFeatureStore(profile.replace(**{"clip.dtype": "bf16"}))
    key = "0" * 64
    assert len({base.tokens_key(key), other_size.tokens_key(key), other_dtype.tokens_key(key)}) == 3
    assert base.cache.dir != other_dtype.cache.dir  # the model identity names the dtype too


def test_in_memory_images_are_cached_by_content(profile):
    images = [np.full((40, 50, 3), v, np.uint8) for v in (10, 200, 10)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keys = features.cache_clip_images(profile, images)
    assert keys[0] == keys[2] != keys[1]
    store = ClipFeatureStore(profile)
    assert all(store.tokens_for_key(k) is not None for k in keys)
    assert store.tokens_for_key("f" * 64) is None
