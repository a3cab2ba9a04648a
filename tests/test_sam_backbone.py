"""SAM backbone: registry build, checkpoint loading, embeddings equal SamPredictor's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.utils.transforms import ResizeLongestSide

from clipsam_lib.config import SamConfig, load_profile
from clipsam_lib.errors import WeightsError
from clipsam_lib.features import FeatureCache, SamEmbeddingReader, cached_embedding
from clipsam_lib.modeling import sam_backbone
from clipsam_lib.modeling.sam_backbone import SamBackbone, build_sam, sam_identity

TINY = SamConfig(model_type="tiny", checkpoint=None, seed=0)


@pytest.fixture(scope="module")
def backbone() -> SamBackbone:
    return SamBackbone(TINY)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(120, 200, 3), dtype=np.uint8)  # non-square


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_random_init_is_seeded_and_frozen():
    a, b = build_sam(TINY), build_sam(TINY)
    assert _same_weights(a, b)
    assert not _same_weights(a, build_sam(SamConfig(model_type="tiny", checkpoint=None, seed=1)))
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    assert a.image_encoder.img_size == 1024


def test_checkpoint_loads_through_the_registry_builder(tmp_path):
    source = build_sam(SamConfig(model_type="tiny", checkpoint=None, seed=3))
    path = tmp_path / "sam_tiny.pth"
    torch.save(source.state_dict(), path)
    loaded = build_sam(SamConfig(model_type="tiny", checkpoint=str(path)))
    assert _same_weights(source, loaded)


def test_missing_checkpoint_is_one_clear_error(tmp_path):
    missing = tmp_path / "sam_vit_h_4b8939.pth"
    with pytest.raises(FileNotFoundError, match="sam_vit_h_4b8939.pth"):
        build_sam(SamConfig(model_type="vit_h", checkpoint=str(missing)))


def test_unknown_model_type_is_rejected():
    with pytest.raises(ValueError, match="model_type"):
        build_sam(SamConfig(model_type="vit_x", checkpoint=None))


def test_checkpoint_of_another_size_is_a_clear_error(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(build_sam(TINY).state_dict(), path)
    with pytest.raises(WeightsError, match="does not load into model_type .vit_b."):
        build_sam(SamConfig(model_type="vit_b", checkpoint=str(path)))


def test_embedding_matches_sam_predictor(backbone, image):
    emb = backbone.embed(image)
    reference = SamPredictor(backbone.model)
    # The same picture handed over as BGR: SamPredictor flips it back to RGB itself.
    reference.set_image(np.ascontiguousarray(image[..., ::-1]), image_format="BGR")
    assert emb.embedding.shape == (1, 256, 64, 64)
    assert emb.embedding.dtype == torch.float32
    torch.testing.assert_close(emb.embedding, reference.get_image_embedding())
    assert emb.original_size == (120, 200)
    assert emb.input_size == ResizeLongestSide.get_preprocess_shape(120, 200, 1024) == (614, 1024)


def test_embedding_depends_on_channel_order(backbone, image):
    flipped = backbone.embed(np.ascontiguousarray(image[..., ::-1]))
    assert not torch.allclose(backbone.embed(image).embedding, flipped.embedding)


def test_bf16_autocast_path_is_close_to_fp32(backbone, image):
    bf16 = SamBackbone(SamConfig(model_type="tiny", checkpoint=None, dtype="bf16"),
                       model=backbone.model)
    a, b = backbone.embed(image).embedding, bf16.embed(image).embedding
    assert b.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99


def test_identity_tracks_what_changes_the_embedding():
    base = sam_identity(TINY)
    assert base["weights"] == "random-init:seed=0"
    for change in ({"seed": 1}, {"dtype": "bf16"}, {"model_type": "vit_b"}):
        assert sam_identity(SamConfig(**{**TINY.__dict__, **change})) != base


def test_cache_reader_never_builds_sam(tmp_path, backbone, image, monkeypatch):
    profile = load_profile("smoke", cache_dir=str(tmp_path / "cache"))
    cache = FeatureCache(tmp_path / "cache" / "sam", sam_identity(profile.sam),
                         profile.cache_dtype)
    computed = cached_embedding(cache, image, backbone)

    def no_build(cfg):
        raise AssertionError("the reader built SAM")

    monkeypatch.setattr(sam_backbone, "build_sam", no_build)
    reader = SamEmbeddingReader(profile)
    assert reader.has(image)
    read = reader(image)
    assert read.input_size == computed.input_size
    assert read.original_size == computed.original_size
    torch.testing.assert_close(read.embedding, computed.embedding, atol=2e-3, rtol=2e-3)
    with pytest.raises(KeyError, match="extract_sam_embeddings"):
        reader(np.zeros((10, 10, 3), np.uint8))
