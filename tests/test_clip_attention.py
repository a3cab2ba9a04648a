"""``clip.attention: headwise`` computes open_clip's own attention, with its weights."""

from __future__ import annotations

import warnings

import pytest
import torch

from clipsam_lib.config import ClipConfig, load_profile
from clipsam_lib.modeling.clip_attention import HeadwiseAttention, resolve_attention
from clipsam_lib.modeling.clip_backbone import ClipBackbone, clip_identity

TINY = {"model_name": "clipsam-tiny-vit", "pretrained": None, "image_size": 224,
        "stages": (1, 2)}


def _clip(**overrides) -> ClipBackbone:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ClipBackbone(ClipConfig(**{**TINY, **overrides}))


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_headwise_equals_the_library_module_in_fp32_and_within_bf16_rounding():
    pixels = torch.randn(3, 3, 224, 224)  # a batch: every picture's heads are looped over
    library = _clip(attention="library")
    headwise = _clip(attention="headwise")
    assert all(isinstance(b.attn, HeadwiseAttention)
               for b in headwise.model.visual.transformer.resblocks)
    assert all(isinstance(b.attn, torch.nn.MultiheadAttention)
               for b in library.model.visual.transformer.resblocks)
    # Same parameters under the same names: a checkpoint loads before or after the swap.
    assert list(headwise.model.state_dict()) == list(library.model.state_dict())
    want_stages, want_global = library.encode_images(pixels)
    got_stages, got_global = headwise.encode_images(pixels)
    for got, want in zip(got_stages + [got_global], want_stages + [want_global]):
        assert _relative_error(got, want) <= 1e-5
    bf16_stages, _ = _clip(attention="headwise", dtype="bf16").encode_images(pixels)
    for got, want in zip(bf16_stages, want_stages):
        assert _relative_error(got, want) <= 2e-2


def test_headwise_refuses_what_it_does_not_compute():
    block = _clip(attention="headwise").model.visual.transformer.resblocks[0].attn
    x = torch.randn(5, 1, block.out_proj.in_features)
    with pytest.raises(ValueError, match="self-attention"):
        block(x, x, x, need_weights=True)
    with pytest.raises(ValueError, match="self-attention"):
        block(x, x.clone(), x)


def test_auto_is_headwise_in_bf16_only():
    assert resolve_attention("auto", "bf16") == "headwise"
    assert resolve_attention("auto", "fp32") == "library"
    assert resolve_attention("library", "bf16") == "library"
    assert resolve_attention("headwise", "fp32") == "headwise"
    with pytest.raises(ValueError, match="clip.attention"):
        resolve_attention("fused", "fp32")


def test_identities_name_headwise_only_and_follow_a_dtype_override():
    fp32 = load_profile("smoke")
    assert fp32.clip.attention == "auto"
    assert "attention" not in clip_identity(fp32.clip)  # the fp32 caches keep their keys
    bf16 = fp32.replace(**{"clip.dtype": "bf16"})
    assert clip_identity(bf16.clip)["attention"] == "headwise"
    assert _clip(dtype="bf16").attention == "headwise"
    library = fp32.replace(**{"clip.dtype": "bf16", "clip.attention": "library"})
    assert "attention" not in clip_identity(library.clip)
