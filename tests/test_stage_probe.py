"""The stage probe (clipsam_lib.stage_probe) against open_clip's own path and scikit-learn."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch

from clipsam_lib import stage_probe
from clipsam_lib.config import UMCIConfig
from clipsam_lib.modeling import clip_backbone  # noqa: F401  (registers the package's configs)
from clipsam_lib.modeling.umci import build_umci


@pytest.fixture(scope="module")
def tiny_visual():
    torch.manual_seed(0)
    visual = open_clip.create_model("clipsam-tiny-vit", pretrained=None).visual.eval()
    with torch.no_grad():  # a trained-looking LayerNorm, so its affine part is exercised
        visual.ln_post.weight.uniform_(0.5, 1.5)
        visual.ln_post.bias.normal_(0, 0.2)
    return visual


def test_the_head_is_open_clips_own_path_from_the_last_block_to_the_text_space(tiny_visual):
    images = torch.randn(2, 3, tiny_visual.image_size[0], tiny_visual.image_size[1])
    last = len(tiny_visual.transformer.resblocks) - 1
    with torch.no_grad():
        stage = tiny_visual.forward_intermediates(images, indices=[last], output_fmt="NLC")
        tiny_visual.output_tokens = True
        _, tokens = tiny_visual(images)  # after ln_post, class token dropped, before proj
        tiny_visual.output_tokens = False
        ours = stage_probe.clip_head(tiny_visual)(stage["image_intermediates"][0])
    assert torch.allclose(ours, tokens @ tiny_visual.proj, atol=1e-5)


def test_the_head_reading_swaps_only_the_linear_layers(tiny_visual):
    width, embed = tiny_visual.proj.shape
    baseline = build_umci(UMCIConfig(enabled=False), width, embed, n_stages=2)
    before = [p.clone() for p in baseline.parameters()]
    probe = stage_probe.head_reading(baseline, tiny_visual)
    assert all(torch.equal(a, b) for a, b in zip(before, baseline.parameters()))
    tokens = [torch.randn(1, 16, width) for _ in range(2)]
    text = torch.randn(1, 2, embed)
    head = stage_probe.clip_head(tiny_visual)
    expected = [probe.cfg.logit_scale * torch.einsum(
        "bhwd,bcd->bchw", torch.nn.functional.normalize(head(t).view(1, 4, 4, -1), dim=-1),
        torch.nn.functional.normalize(text, dim=-1)) for t in tokens]
    with torch.no_grad():
        got = probe(tokens, text).stage_logits
    assert all(torch.allclose(g, e, atol=1e-5) for g, e in zip(got, expected))
    with pytest.raises(ValueError, match="umci.enabled: false"):
        stage_probe.head_reading(build_umci(UMCIConfig(), width, embed, 2), tiny_visual)


def test_the_mean_leaves_out_classes_without_anomalous_pixels_and_says_so():
    nan = float("nan")
    scores = [{"auroc": 0.8, "ap": 0.3, "f1_max": 0.4}, {"auroc": nan, "ap": nan, "f1_max": nan},
              {"auroc": 0.6, "ap": 0.1, "f1_max": 0.2}]
    mean = stage_probe._macro_mean(scores)
    assert mean["n_classes"] == 2 and mean["pixel_auroc"] == pytest.approx(0.7)
    assert mean["pixel_ap"] == pytest.approx(0.2) and "1 of 3 classes" in mean["note"]
    alone = stage_probe._macro_mean(scores[1:2])
    assert np.isnan(alone["pixel_auroc"]) and alone["note"].startswith("1 of 1")
    assert stage_probe._macro_mean(scores[:1])["note"] == ""
