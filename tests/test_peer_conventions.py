"""APRIL-GAN's conventions (method.md section 5), each a switch, checked by hand.

The expectations are derived from the behaviour the spec describes, never from its code:
bilinear upsampling with ``align_corners=True``, exact GELU for OpenAI weights away from
their native size, ``convert("L") > 0`` masks and the softmax of 100 cos(global image
embedding, text) as the image score. The last test rebuilds APRIL-GAN's maps from a plain
open_clip model (forward hooks, a linear layer, 100 x cos, upsample, softmax, sum) and
asks the project's baseline to equal them to 1e-5 under the paper profile's switches.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from PIL import Image
from sklearn.metrics import roc_auc_score
from synthetic_defects import tiny_profile

from clipsam_lib.config import ClipConfig, EvalConfig, UMCIConfig, load_profile
from clipsam_lib.data.io import read_mask
from clipsam_lib.evaluate import evaluate_maps, image_scores
from clipsam_lib.modeling import text_prompts
from clipsam_lib.modeling.clip_backbone import ClipBackbone, uses_quick_gelu
from clipsam_lib.modeling.umci import build_umci, upsample_logits
from clipsam_lib.train import umci_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A tiny stand-in for ViT-L-14-336: an open_clip JSON without "quick_gelu" (as the real
# one), native size 224, and an "openai" tag trained with QuickGELU (as the real one).
OPENAI_LIKE = "clipsam-test-openai-like"
NATIVE = 224


# -- 1. upsampling corners -----------------------------------------------------------------


def _two_by_two() -> torch.Tensor:
    """Logits [1, 2, 2, 2]: channel 1 = [[0, 1], [2, 3]] = x + 2y, channel 0 = 0."""
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    return logits


def _hand_upsampled(coords: list[float]) -> torch.Tensor:
    """The bilinear interpolant x + 2y of the 2x2 grid at source coordinates ``coords``."""
    c = torch.tensor(coords)
    return c[None, :] + 2 * c[:, None]


def test_two_by_two_logits_upsampled_to_four_by_four_under_each_convention():
    # align_corners=True: output pixel i sits at source i * (2 - 1) / (4 - 1).
    corners = upsample_logits(_two_by_two(), (4, 4), align_corners=True)[0, 1]
    assert torch.allclose(corners, _hand_upsampled([0, 1 / 3, 2 / 3, 1]), atol=1e-6)
    # align_corners=False: source (i + 0.5) / 2 - 0.5, clamped to the grid: 0, .25, .75, 1.
    centres = upsample_logits(_two_by_two(), (4, 4), align_corners=False)[0, 1]
    assert torch.allclose(centres, _hand_upsampled([0, 0.25, 0.75, 1]), atol=1e-6)


def test_umci_maps_and_training_loss_use_the_same_corner_convention():
    grid = 2
    tokens = [torch.randn(1, grid * grid, 8, generator=torch.Generator().manual_seed(0))]
    text = F.normalize(torch.randn(1, 2, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
    target = torch.zeros(1, 4, 4, dtype=torch.uint8)
    target[0, :2, :2] = 1
    for align in (True, False):
        cfg = UMCIConfig(enabled=False, align_corners=align, logit_scale=2.0)  # no saturation
        umci = build_umci(cfg, 8, 4, 1)
        with torch.no_grad():
            out = umci(tokens, text, out_size=4)
        expected = F.interpolate(out.stage_logits[0], size=(4, 4), mode="bilinear",
                                 align_corners=align).softmax(1)
        assert torch.allclose(out.stage_maps[0], expected, atol=1e-6)
        # The loss sees the same map: its focal term equals one computed from that map.
        _, focal, _ = umci_loss(out.stage_logits, target, gamma=0.0, align_corners=align)
        p_true = torch.where(target.bool(), expected[:, 1], expected[:, 0])
        assert abs(focal - float(-p_true.log().mean())) < 1e-5


# -- 2. the activation -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def openai_like(tmp_path_factory):
    """Register the stand-in config and its "openai" tag; write a local "OpenAI" file."""
    folder = tmp_path_factory.mktemp("openai_like")
    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": NATIVE, "layers": 3, "width": 48, "head_width": 16,
                       "patch_size": 14},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                     "layers": 1},
    }
    (folder / f"{OPENAI_LIKE}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / f"{OPENAI_LIKE}.json")
    open_clip.pretrained._PRETRAINED[OPENAI_LIKE] = {
        "openai": {"url": "https://example/openai-like.pt", "quick_gelu": True}
    }
    torch.manual_seed(7)
    model = open_clip.create_model(OPENAI_LIKE, pretrained=None, quick_gelu=True)
    checkpoint = folder / "openai-like.pt"
    torch.save(model.state_dict(), checkpoint)
    yield checkpoint
    open_clip.pretrained._PRETRAINED.pop(OPENAI_LIKE, None)


def _cfg(checkpoint, **changes) -> ClipConfig:
    base = ClipConfig(model_name=OPENAI_LIKE, pretrained=str(checkpoint), image_size=NATIVE,
                      stages=(1, 2, 3))
    return dataclasses.replace(base, **changes)


def _has_quick_gelu(backbone: ClipBackbone) -> bool:
    return any(isinstance(m, QuickGELU) for m in backbone.model.visual.modules())


@pytest.mark.parametrize("activation, size, quick", [
    ("peer", NATIVE, True),        # OpenAI's own model at its native size
    ("peer", 336, False),          # rebuilt from the JSON (no quick_gelu): exact GELU
    ("as_trained", 336, True),     # how the weights were trained
    ("gelu", NATIVE, False),
    ("quick_gelu", 336, True),
])
def test_activation_of_a_model_built_from_a_local_openai_checkpoint(
    openai_like, activation, size, quick
):
    cfg = _cfg(openai_like, activation=activation, image_size=size)
    assert uses_quick_gelu(cfg) is quick
    backbone = ClipBackbone(cfg)  # the paper profile's path: a local checkpoint file
    assert _has_quick_gelu(backbone) is quick
    assert backbone.identity["model_config"]["quick_gelu"] is quick  # part of the cache key


def test_the_paper_profile_resolves_to_exact_gelu_at_518():
    clip = load_profile("paper").clip
    assert (clip.activation, clip.image_size) == ("peer", 518) and not uses_quick_gelu(clip)
    with pytest.raises(ValueError, match="clip.activation"):
        uses_quick_gelu(dataclasses.replace(clip, activation="swish"))


# -- 3. mask binarization ----------------------------------------------------------------------


def _palette_mask(path) -> None:
    """Class indices 1 and 2 drawn as colours (1, 0, 0) and (2, 0, 0): they look black."""
    index = np.zeros((4, 4), np.uint8)
    index[0, :2] = 1
    index[3, 3] = 2
    image = Image.frombytes("P", (4, 4), index.tobytes())
    image.putpalette([v for k in range(256) for v in (k, 0, 0)])
    image.save(path)


def test_palette_mask_under_both_binarizations(tmp_path):
    path = tmp_path / "palette.png"
    _palette_mask(path)
    raw = read_mask(path, 0.0, "raw")
    assert raw.sum() == 3 and raw[0, :2].all() and raw[3, 3]
    # Luminance of (k, 0, 0) is round(0.299 k): 0 for index 1, 1 for index 2.
    with pytest.warns(UserWarning, match="palette.png.*drops 2 of 3"):
        peer = read_mask(path, 0.0, "luminance")
    assert peer.sum() == 1 and peer[3, 3]


def test_rgb_mask_under_both_binarizations(tmp_path):
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)  # L = 76
    rgb[0, 1] = (0, 0, 255)  # L = 29
    rgb[0, 2] = (0, 0, 3)    # L = round(0.342) = 0
    rgb[1, 0] = (0, 1, 0)    # L = round(0.587) = 1
    path = tmp_path / "rgb.png"
    Image.fromarray(rgb).save(path)
    assert read_mask(path, 0.0, "raw").tolist() == [[True, True, True], [True, False, False]]
    with pytest.warns(UserWarning, match="drops 1 of 4"):
        peer = read_mask(path, 0.0, "luminance")
    assert peer.tolist() == [[True, True, False], [True, False, False]]


def test_grayscale_0_255_masks_agree_under_both(tmp_path):
    gray = np.zeros((3, 3), np.uint8)
    gray[1, 1:] = 255
    path = tmp_path / "gray.png"
    Image.fromarray(gray).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(read_mask(path, 0.0, "raw"), read_mask(path, 0.0, "luminance"))


# -- 4. the image score -----------------------------------------------------------------------


def test_image_score_combinations_by_hand():
    map_max = np.array([0.2, 0.6, 1.0])
    clip = np.array([0.1, 0.5, 0.9])
    assert np.array_equal(image_scores("map_max", map_max, clip), map_max)
    assert np.array_equal(image_scores("clip_global", map_max, clip), clip)
    # 0.5 (clip + min-max normalised map maxima [0, 0.5, 1]).
    assert np.allclose(image_scores("clip_global+map_max", map_max, clip), [0.05, 0.5, 0.95])
    assert np.allclose(image_scores("clip_global+map_max", np.ones(3), clip), clip / 2)


def test_clip_global_score_is_the_softmax_of_100_cos_of_the_image_embedding(tmp_path):
    """Reference: open_clip's own ``encode_image``/``encode_text`` on the same model."""
    from clipsam_lib import paths
    from clipsam_lib.features import clip_global_scores, extract_clip_features, read_rgb
    from clipsam_lib.workspace import Workspace

    profile = tiny_profile(tmp_path, cache_dtype="fp32")
    records = Workspace(profile).eval_records("src")[::5]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random init, said
        backbone = ClipBackbone(profile.clip)
    extract_clip_features(profile, "src", records, backbone=backbone, progress=False)
    from clipsam_lib.features import FeatureCache

    read_before = FeatureCache.bytes_read
    scores = clip_global_scores(profile, "src", records)
    # Image scores read the small global-embedding entries, never the stage tokens.
    token_bytes = 4 * 64 * 64 * 4  # 4 stages x 64 patches x 64 channels, fp32 (cache dtype)
    assert FeatureCache.bytes_read - read_before < len(records) * token_bytes / 4

    model, root = backbone.model, paths.dataset_root(profile, "src")
    with torch.no_grad():
        pixels = torch.stack([backbone.preprocess(read_rgb(root / r["img_path"]))
                              for r in records])
        embedding = F.normalize(model.encode_image(pixels), dim=-1)
        expected = []
        for rec, image_embedding in zip(records, embedding):
            shown = text_prompts.display_name(rec["cls_name"])
            text = torch.stack([
                F.normalize(F.normalize(model.encode_text(backbone.tokenizer(g)), dim=-1)
                            .mean(0), dim=-1)
                for g in text_prompts.state_sentences(shown)
            ])
            expected.append((100 * text @ image_embedding).softmax(-1)[1])
    got = torch.tensor([scores[r["img_path"]] for r in records])
    assert torch.allclose(got, torch.stack(expected), atol=1e-5)


def test_evaluation_uses_the_configured_image_score_and_names_it(tmp_path):
    records = [{"img_path": f"c/test/good/{i}.png", "mask_path": "", "cls_name": "c",
                "specie_name": "", "anomaly": int(i >= 2), "width": 8, "height": 8}
               for i in range(4)]
    for rec in records[2:]:
        rec["mask_path"] = rec["img_path"].replace("test/good", "gt")
        (tmp_path / rec["mask_path"]).parent.mkdir(parents=True, exist_ok=True)
        mask = np.zeros((8, 8), np.uint8)
        mask[2:4, 2:4] = 255
        Image.fromarray(mask).save(tmp_path / rec["mask_path"])
    rng = np.random.default_rng(3)
    maps = {r["img_path"]: rng.random((8, 8)).astype(np.float32) for r in records}
    clip = {r["img_path"]: s for r, s in zip(records, [0.9, 0.1, 0.2, 0.8])}
    cfg = EvalConfig(image_score="clip_global")
    row = evaluate_maps(records, tmp_path, lambda r: maps[r["img_path"]], cfg, 8, "d",
                        clip_scores=lambda r: clip[r["img_path"]]).iloc[0]
    assert row.image_score == "clip_global"
    assert row.image_auroc == roc_auc_score([0, 0, 1, 1], [0.9, 0.1, 0.2, 0.8])
    with pytest.raises(ValueError, match="clip_scores"):
        evaluate_maps(records, tmp_path, lambda r: maps[r["img_path"]], cfg, 8, "d")
    with pytest.raises(ValueError, match="eval.image_score"):
        evaluate_maps(records, tmp_path, lambda r: maps[r["img_path"]],
                      EvalConfig(image_score="best"), 8, "d")


# -- 5. the APRIL-GAN row, end to end --------------------------------------------------------


def _april_gan_maps(checkpoint, size: int, image: np.ndarray, weights, class_name: str):
    """APRIL-GAN's zero-shot maps as the spec describes them, from plain open_clip.

    At another size than the native one the model is rebuilt from its JSON (no quick_gelu:
    exact GELU) with the OpenAI state dict; at the native size it is OpenAI's own model
    (QuickGELU). Squash-bicubic preprocessing; residual stream after the tapped blocks (class token
    dropped, no ln_post); per stage a linear layer, L2 norm, 100 x tokens @ text; logits
    bilinearly upsampled with align_corners=True; softmax over the two states; summed.
    """
    model = open_clip.create_model(OPENAI_LIKE, pretrained=str(checkpoint),
                                   force_image_size=size, quick_gelu=size == NATIVE).eval()
    transform = open_clip.image_transform(size, is_train=False,
                                          mean=open_clip.OPENAI_DATASET_MEAN,
                                          std=open_clip.OPENAI_DATASET_STD,
                                          resize_mode="squash", interpolation="bicubic")
    captured = []
    hooks = [block.register_forward_hook(lambda _m, _i, out: captured.append(out))
             for block in model.visual.transformer.resblocks]
    tokenizer = open_clip.get_tokenizer(OPENAI_LIKE)
    with torch.no_grad():
        model.encode_image(transform(Image.fromarray(image))[None])
        for hook in hooks:
            hook.remove()
        text = torch.stack([
            F.normalize(F.normalize(model.encode_text(tokenizer(group)), dim=-1).mean(0), dim=-1)
            for group in text_prompts.state_sentences(class_name)
        ])  # [2, D]
        stage_maps = []
        for stage_out, (weight, bias) in zip(captured, weights):
            patch = stage_out[:, 1:] @ weight.T + bias
            patch = patch / patch.norm(dim=-1, keepdim=True)
            logits = 100.0 * patch @ text.T  # [1, L, 2]
            grid = int(np.sqrt(logits.shape[1]))
            logits = logits.permute(0, 2, 1).reshape(1, 2, grid, grid)
            up = F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
            stage_maps.append(torch.softmax(up, dim=1)[:, 1])
    return stage_maps, sum(stage_maps)


@pytest.mark.parametrize("size", [NATIVE + 14 * 4, NATIVE])
def test_baseline_maps_equal_april_gans_under_the_paper_profile_switches(openai_like, size):
    paper = load_profile("paper")
    clip_cfg = _cfg(openai_like, image_size=size, activation=paper.clip.activation)
    umci_cfg = dataclasses.replace(paper.umci, enabled=False, stage_combination="sum")
    backbone = ClipBackbone(clip_cfg)
    torch.manual_seed(11)
    umci = build_umci(umci_cfg, backbone.width, backbone.embed_dim, len(clip_cfg.stages))
    weights = [(layer.weight.detach(), layer.bias.detach()) for layer in umci.project]
    image = np.random.default_rng(5).integers(0, 256, (90, 130, 3), dtype=np.uint8)

    expected_stages, expected_sum = _april_gan_maps(openai_like, size, image, weights, "bottle")
    with torch.no_grad():
        tokens = backbone.encode_stages(backbone.preprocess(image)[None])
        out = umci(tokens, backbone.text_features(["bottle"]), out_size=size)
    for got, expected in zip(out.stage_maps, expected_stages):
        assert (got[:, 1] - expected).abs().max() < 1e-5
    assert (out.rough_map - expected_sum).abs().max() < 1e-5

    # The test can fail: the project's other readings move the maps well past 1e-5.
    half_pixel = build_umci(dataclasses.replace(umci_cfg, align_corners=False),
                            backbone.width, backbone.embed_dim, len(clip_cfg.stages))
    half_pixel.load_state_dict(umci.state_dict())
    with torch.no_grad():
        moved = half_pixel(tokens, backbone.text_features(["bottle"]), out_size=size).rough_map
    assert (moved - expected_sum).abs().max() > 1e-3
    if size != NATIVE:
        as_trained = ClipBackbone(dataclasses.replace(clip_cfg, activation="as_trained"))
        with torch.no_grad():
            other = as_trained.encode_stages(as_trained.preprocess(image)[None])
        assert max((a - b).abs().max() for a, b in zip(other, tokens)) > 1e-4
