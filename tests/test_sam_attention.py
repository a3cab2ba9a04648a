"""The SDPA attention swap computes segment-anything's own attention, with its weights."""

from __future__ import annotations

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention

from clipsam_lib.config import SamConfig
from clipsam_lib.modeling.sam_attention import SdpaAttention, swap_attention
from clipsam_lib.modeling.sam_backbone import build_sam, build_sam_tiny


def _encoder_with_rel_pos():
    torch.manual_seed(0)
    sam = build_sam_tiny(None)
    for block in sam.image_encoder.blocks:  # SAM inits them at 0: make the bias matter
        torch.nn.init.normal_(block.attn.rel_pos_h, std=0.5)
        torch.nn.init.normal_(block.attn.rel_pos_w, std=0.5)
    return sam.image_encoder


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_sdpa_equals_the_library_module_in_fp32_and_within_bf16_rounding():
    encoder = _encoder_with_rel_pos()
    x = torch.randn(2, 3, 1024, 1024)  # batch 2: windows and the global block both batched
    with torch.no_grad():
        reference = encoder(x)
        swap_attention(encoder, "sdpa")
        assert all(isinstance(b.attn, SdpaAttention) for b in encoder.blocks)
        fused = encoder(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fused_bf16 = encoder(x)
    assert _relative_error(fused, reference) <= 1e-5
    assert _relative_error(fused_bf16, reference) <= 2e-2


def test_a_wrong_bias_is_caught():
    """The comparison above can fail: drop the relative-position term and it does."""
    encoder = _encoder_with_rel_pos()
    x = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        reference = encoder(x)
        swap_attention(encoder, "sdpa")
        for block in encoder.blocks:
            block.attn.use_rel_pos = False
        assert _relative_error(encoder(x), reference) > 1e-3


def test_the_swap_shares_the_library_parameters_and_is_a_config_switch():
    library = Attention(dim=32, num_heads=2, use_rel_pos=True, input_size=(4, 4))
    swapped = SdpaAttention(library)
    assert swapped.qkv is library.qkv and swapped.rel_pos_h is library.rel_pos_h
    assert set(dict(swapped.named_parameters())) == set(dict(library.named_parameters()))
    off = build_sam(SamConfig(model_type="tiny", checkpoint=None, attention="library"))
    on = build_sam(SamConfig(model_type="tiny", checkpoint=None, attention="sdpa"))
    assert all(isinstance(b.attn, Attention) for b in off.image_encoder.blocks)
    assert all(isinstance(b.attn, SdpaAttention) for b in on.image_encoder.blocks)
    assert off.state_dict().keys() == on.state_dict().keys()
    with pytest.raises(ValueError, match="sam.attention"):
        swap_attention(off.image_encoder, "flash")
