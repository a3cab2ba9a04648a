"""UMCI: shapes, the linear baseline by hand, attention by hand, switches, gradients."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from clipsam_lib.config import ClipConfig, UMCIConfig
from clipsam_lib.modeling.clip_backbone import ClipBackbone
from clipsam_lib.modeling.umci import CrossAttention, StripPath, build_umci

SMALL = UMCIConfig(hidden_dim=32, heads=4)
C, D, STAGES, GRID = 24, 16, 3, 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def inputs(batch: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    tokens = [torch.randn(batch, GRID * GRID, C, generator=gen) for _ in range(STAGES)]
    text = F.normalize(torch.randn(batch, 2, D, generator=gen), dim=-1)
    return tokens, text


def test_output_shapes_and_map_ranges():
    torch.manual_seed(0)
    umci = build_umci(SMALL, C, D, STAGES)
    tokens, text = inputs()
    out = umci(tokens, text, out_size=40)
    assert [t.shape for t in out.stage_logits] == [(2, 2, GRID, GRID)] * STAGES
    assert [m.shape for m in out.stage_maps] == [(2, 2, 40, 40)] * STAGES
    assert out.rough_map.shape == (2, 40, 40)
    for m in out.stage_maps:
        assert torch.allclose(m.sum(1), torch.ones(2, 40, 40), atol=1e-6)
    assert 0 <= out.rough_map.min() and out.rough_map.max() <= 1
    expected = torch.stack([m[:, 1] for m in out.stage_maps]).mean(0)
    assert torch.allclose(out.rough_map, expected)
    assert umci(tokens, text).stage_maps[0].shape == (2, 2, GRID, GRID)  # no out_size: grid


@pytest.mark.parametrize("align_corners", [True, False])
def test_linear_baseline_is_scaled_cosine_then_bilinear_then_softmax(align_corners):
    """UMCI off: logits = 100 cos(W v + b, L_c), computed here by hand."""
    cfg = dataclasses.replace(SMALL, enabled=False, align_corners=align_corners)
    umci = build_umci(cfg, C, D, STAGES)
    tokens, text = inputs()
    out = umci(tokens, text, out_size=16)
    for i in range(STAGES):
        layer = umci.project[i]
        projected = tokens[i] @ layer.weight.T + layer.bias  # [B, N, D]
        cos = torch.einsum("bnd,bcd->bcn", F.normalize(projected, dim=-1), text)
        logits = (100 * cos).reshape(2, 2, GRID, GRID)
        assert torch.allclose(out.stage_logits[i], logits, atol=1e-4)
        up = F.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=align_corners)
        assert torch.allclose(out.stage_maps[i], up.softmax(1), atol=1e-5)


def test_sum_combination_is_the_peer_sum_of_stage_maps():
    torch.manual_seed(0)
    mean = build_umci(SMALL, C, D, STAGES)
    total = build_umci(dataclasses.replace(SMALL, stage_combination="sum"), C, D, STAGES)
    total.load_state_dict(mean.state_dict())
    tokens, text = inputs()
    assert torch.allclose(
        total(tokens, text, 16).rough_map, STAGES * mean(tokens, text, 16).rough_map, atol=1e-5
    )


def test_cross_attention_matches_a_hand_written_multi_head_attention():
    torch.manual_seed(0)
    attn = CrossAttention(dim=D, hidden=32, heads=4)
    query, memory = torch.randn(2, 5, D), torch.randn(2, 7, D)
    got = attn(query, memory, memory)
    q, k, v = attn.q(query), attn.k(memory), attn.v(memory)
    heads = []
    for h in range(4):
        part = slice(8 * h, 8 * (h + 1))
        weights = (q[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(8)).softmax(-1)
        heads.append(weights @ v[..., part])
    assert torch.allclose(got, attn.out(torch.cat(heads, -1)), atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_strip_path_output_is_a_row_term_plus_a_column_term(pooling):
    torch.manual_seed(0)
    strip = StripPath(D, 32, 4, pooling)
    grid, text = torch.randn(2, 6, 5, D), F.normalize(torch.randn(2, 2, D), dim=-1)
    s = strip(grid, text)
    assert s.shape == grid.shape
    # S[h, w] = Z_row[h] + Z_col[w]  <=>  every 2x2 "interaction" term vanishes.
    interaction = s - s[:, :, :1] - s[:, :1, :] + s[:, :1, :1]
    assert interaction.abs().max() < 1e-5
    # Reference: the same four attentions applied to strips pooled here.
    rows = grid.mean(2) if pooling == "mean" else grid.amax(2)
    text_rows = strip.text_from_rows(text, rows, rows)
    z_rows = strip.rows_from_text(rows, text_rows, text_rows)
    cols = grid.mean(1) if pooling == "mean" else grid.amax(1)
    text_cols = strip.text_from_cols(text, cols, cols)
    z_cols = strip.cols_from_text(cols, text_cols, text_cols)
    assert torch.allclose(s, z_rows[:, :, None] + z_cols[:, None], atol=1e-5)


SWITCHES = [
    {},
    {"enabled": False},
    {"strip_path": False},
    {"scale_path": False},
    {"strip_path": False, "scale_path": False},
    {"hidden_dim": 16, "heads": 2},
    {"kernels": (3, 5)},
    {"kernels": (2, 3)},
    {"kernels": (4, 8)},
    {"heads": 1},
    {"pooling": "max"},
    {"norm": "pre"},
    {"norm": "post"},
    {"residual": False},
    {"stage_combination": "sum"},
    {"logit_scale": 10.0},
]


@pytest.mark.parametrize(
    "switch", SWITCHES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "default"
)
def test_every_switch_builds_runs_and_trains_every_parameter(switch):
    torch.manual_seed(0)
    umci = build_umci(dataclasses.replace(SMALL, **switch), C, D, STAGES)
    tokens, text = inputs()
    out = umci(tokens, text, out_size=20)
    loss = sum(F.binary_cross_entropy(m[:, 1], torch.rand(2, 20, 20)) for m in out.stage_maps)
    loss.backward()
    for name, param in umci.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_invalid_switches_are_clear_errors():
    for bad, match in [
        ({"norm": "mid"}, "norm"),
        ({"pooling": "median"}, "pooling"),
        ({"hidden_dim": 30, "heads": 4}, "divisible"),
        ({"stage_combination": "max"}, "stage_combination"),
        ({"strip_path": False, "scale_path": False, "residual": False}, "no input"),
    ]:
        with pytest.raises(ValueError, match=match):
            build_umci(dataclasses.replace(SMALL, **bad), C, D, STAGES)
    with pytest.raises(ValueError, match="text_dim"):
        build_umci(dataclasses.replace(SMALL, text_dim=D + 1), C, D, STAGES)


def test_gradients_reach_umci_but_never_the_frozen_backbone():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = ClipBackbone(
            ClipConfig(
                model_name="clipsam-tiny-vit", pretrained=None, image_size=112, stages=(1, 2, 3, 4)
            )
        )
    pixels = torch.randn(2, 3, 112, 112)
    tokens = clip.encode_stages(pixels)
    text = clip.text_features(["felt", "moss"])
    umci = build_umci(SMALL, clip.width, clip.embed_dim, 4)
    out = umci(tokens, text, 112)
    out.rough_map.mean().backward()
    assert all(p.grad is not None for p in umci.parameters())
    assert all(p.grad is None and not p.requires_grad for p in clip.model.parameters())
