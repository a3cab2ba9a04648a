"""The frozen CLIP backbone on the tiny random-init config of the same architecture."""

from __future__ import annotations

import dataclasses
import hashlib
import time
import warnings

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipsam_lib import weights
from clipsam_lib.config import ClipConfig
from clipsam_lib.errors import WeightsError
from clipsam_lib.modeling import text_prompts
from clipsam_lib.modeling.clip_backbone import ClipBackbone, clip_identity, uses_quick_gelu

TINY = ClipConfig(
    model_name="clipsam-tiny-vit", pretrained=None, image_size=224, stages=(1, 2, 3, 4)
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def build(**changes) -> ClipBackbone:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the explicit random-init warning
        return ClipBackbone(dataclasses.replace(TINY, **changes))


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    return build()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (150, 230, 3), dtype=np.uint8)


@pytest.mark.parametrize("size, grid", [(336, 24), (518, 37)])
def test_stage_tokens_have_one_row_per_patch_at_the_working_size(size, grid, image):
    clip = build(image_size=size, stages=(2, 4))
    tokens = clip.encode_stages(clip.preprocess(image)[None])
    assert [t.shape for t in tokens] == [(1, grid * grid, 64)] * 2
    assert clip.model.visual.positional_embedding.shape == (grid * grid + 1, 64)


def test_stage_tokens_are_the_residual_stream_after_each_block(backbone, image):
    """Reference: forward hooks on the blocks of a plain forward pass (class token dropped)."""
    captured = []
    hooks = [
        block.register_forward_hook(lambda _m, _i, out: captured.append(out))
        for block in backbone.model.visual.transformer.resblocks
    ]
    pixels = backbone.preprocess(image)[None]
    try:
        with torch.no_grad():
            backbone.model.encode_image(pixels)
    finally:
        for hook in hooks:
            hook.remove()
    tokens = backbone.encode_stages(pixels)
    if not backbone.model.visual.transformer.batch_first:  # blocks run sequence-first
        captured = [out.transpose(0, 1) for out in captured]
    for stage, got in zip((1, 2, 3, 4), tokens):
        assert torch.allclose(got, captured[stage - 1][:, 1:], atol=1e-6)


def test_preprocess_matches_open_clip_squash_transform(backbone, image):
    reference = open_clip.image_transform(
        224,
        is_train=False,
        mean=open_clip.OPENAI_DATASET_MEAN,
        std=open_clip.OPENAI_DATASET_STD,
        resize_mode="squash",
        interpolation="bicubic",
    )(Image.fromarray(image))
    assert torch.allclose(backbone.preprocess(image), reference, atol=1e-6)


def test_positional_embedding_is_interpolated_when_loading_another_size(tmp_path):
    source = build(seed=3).model  # a "checkpoint" trained at 224: 16 x 16 grid
    path = tmp_path / "tiny_224.pt"
    torch.save(source.state_dict(), path)
    loaded = ClipBackbone(dataclasses.replace(TINY, pretrained=str(path), image_size=336)).model
    old = source.visual.positional_embedding.detach()
    new = loaded.visual.positional_embedding.detach()
    assert new.shape == (24 * 24 + 1, 64)
    assert torch.equal(new[0], old[0])  # class token position untouched
    # Independent reference: PIL's bicubic (a = -0.5), channel by channel.
    grid = old[1:].reshape(16, 16, 64).numpy()
    expected = np.stack(
        [
            np.asarray(Image.fromarray(grid[:, :, c], mode="F").resize((24, 24), Image.BICUBIC))
            for c in range(64)
        ],
        axis=-1,
    ).reshape(576, 64)
    assert np.abs(new[1:].numpy() - expected).max() < 1e-4
    assert torch.equal(loaded.visual.conv1.weight, source.visual.conv1.weight)


def test_openai_torchscript_archive_loads_once_its_hash_is_verified(tmp_path, monkeypatch):
    """OpenAI ships TorchScript; only a known, hash-checked file may be loaded that way."""
    source = build(seed=5).model
    path = tmp_path / "tiny-openai.pt"
    extras = {"input_resolution": 224, "context_length": 77, "vocab_size": 49408}  # as OpenAI's
    _torchscript_archive(
        {**source.state_dict(), **{k: torch.tensor(v) for k, v in extras.items()}}, path
    )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setitem(
        weights.KNOWN_CHECKPOINTS,
        path.name,
        weights.KnownCheckpoint("clip", path.name, "https://example", digest),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = ClipBackbone(dataclasses.replace(TINY, pretrained=str(path))).model
    assert torch.equal(loaded.visual.positional_embedding, source.visual.positional_embedding)
    unknown = tmp_path / "unknown.pt"  # same archive, no published hash: not unpickled
    unknown.write_bytes(path.read_bytes())
    with pytest.raises(WeightsError, match="weights_only"):
        ClipBackbone(dataclasses.replace(TINY, pretrained=str(unknown)))


class _Archive(torch.nn.Module):
    def forward(self) -> int:  # scripting needs a forward; nothing calls it
        return 0


def _torchscript_archive(state_dict: dict[str, torch.Tensor], path) -> None:
    """A TorchScript file whose state_dict is ``state_dict`` (OpenAI's JIT checkpoints)."""
    root = _Archive()
    for name, value in state_dict.items():
        *parents, leaf = name.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        module.register_buffer(leaf, value.detach().clone())
    torch.jit.script(root).save(str(path))


def test_openai_tag_fails_fast_with_a_clear_message_when_offline(monkeypatch):
    def offline(*_args, **_kwargs):
        raise OSError("no network")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    cfg = ClipConfig(model_name="ViT-L-14-336", pretrained="openai", image_size=518)
    start = time.perf_counter()
    with pytest.raises(WeightsError) as err:
        ClipBackbone(cfg)
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert "ViT-L-14-336px.pt" in message and "clip.pretrained" in message
    # APRIL-GAN ran exact GELU at 518 px; OpenAI's weights were trained with QuickGELU.
    assert not uses_quick_gelu(cfg)
    assert uses_quick_gelu(dataclasses.replace(cfg, activation="as_trained"))
    assert uses_quick_gelu(dataclasses.replace(cfg, image_size=336))


def test_text_features_are_unit_norm_class_specific_and_match_a_direct_encoding(backbone):
    text = backbone.text_features(["bottle", "metal_nut"])
    assert text.shape == (2, 2, 64)
    assert torch.allclose(text.norm(dim=-1), torch.ones(2, 2), atol=1e-5)
    assert not torch.allclose(text[0], text[1]) and not torch.allclose(text[0, 0], text[0, 1])
    # Reference: encode the anomalous sentences of "metal nut" directly.
    sentences = [
        t.format(s.format("metal nut"))
        for s in text_prompts.ANOMALOUS_STATES
        for t in text_prompts.TEMPLATES
    ]
    with torch.no_grad():
        encoded = F.normalize(backbone.model.encode_text(backbone.tokenizer(sentences)), dim=-1)
    assert torch.allclose(text[1, 1], F.normalize(encoded.mean(0), dim=0), atol=1e-5)
    assert torch.allclose(backbone.text_features(["metal nut"])[0], text[1])


def test_underscore_switch_changes_the_sentences():
    kept = build(keep_underscore=True).text_features(["metal_nut"])
    replaced = build(keep_underscore=False).text_features(["metal_nut"])
    assert not torch.allclose(kept, replaced)


def test_class_name_aliases_reach_the_sentences(backbone):
    assert text_prompts.display_name("mtd", aliases={"mtd": "magnetic tile"}) == "magnetic tile"
    assert text_prompts.display_name("metal_nut", aliases={"mtd": "magnetic tile"}) == "metal nut"
    # The default profile names MTD's single class "magnetic tile" in the sentences.
    assert torch.allclose(
        backbone.text_features(["mtd"]), backbone.text_features(["magnetic tile"])
    )


def test_backbone_is_frozen_and_identity_names_everything(backbone):
    assert not backbone.model.training
    assert not any(p.requires_grad for p in backbone.model.parameters())
    identity = backbone.identity
    assert identity["weights"] == "random-init(seed=0)"
    assert identity["image_size"] == 224 and identity["stages"] == [1, 2, 3, 4]
    assert identity["model_config"]["vision_cfg"]["width"] == 64
    assert clip_identity(dataclasses.replace(TINY, dtype="bf16")) != identity


def test_bf16_autocast_path_stays_close_to_fp32(backbone, image):
    pixels = backbone.preprocess(image)[None]
    reference = backbone.encode_stages(pixels)
    low = build(dtype="bf16").encode_stages(pixels)
    for a, b in zip(reference, low):
        assert a.dtype == b.dtype == torch.float32
        assert (a - b).norm() / a.norm() < 0.05


def test_bad_configuration_is_one_clear_error():
    with pytest.raises(ValueError, match="stages"):
        build(stages=(1, 9))
    with pytest.raises(ValueError, match="not-a-model"):
        build(model_name="not-a-model")
    with pytest.raises(ValueError, match="dtype"):
        build(dtype="fp8")


def _batch_first(model) -> None:
    """Back to open_clip's default layout (what create_model builds)."""
    for transformer in (model.visual.transformer, model.transformer):
        transformer.batch_first = True
        for block in transformer.resblocks:
            block.attn.batch_first = True


def test_sequence_first_layout_gives_the_library_layouts_outputs_in_fp32_and_bf16():
    """The layout fix for bf16 batches (issue 14) changes no value: stage tokens, global
    embedding and text features equal open_clip's batch-first model."""
    fast = build()
    assert not fast.model.visual.transformer.batch_first
    library = build()
    _batch_first(library.model)
    images = torch.randn(3, 3, 224, 224)
    for dtype, tolerance in (("fp32", 1e-5), ("bf16", 2e-2)):
        fast.cfg = library.cfg = dataclasses.replace(TINY, dtype=dtype)
        (stages_f, global_f), (stages_l, global_l) = (fast.encode_images(images),
                                                      library.encode_images(images))
        for a, b in [*zip(stages_f, stages_l), (global_f, global_l)]:
            assert float((a - b).norm() / b.norm()) <= tolerance, dtype
    fast.cfg = library.cfg = TINY
    text_f, text_l = fast.text_features(["bottle"]), library.text_features(["bottle"])
    assert float((text_f - text_l).norm() / text_l.norm()) <= 1e-5


def test_a_batch_larger_than_the_forward_batch_is_split_and_gives_the_same_tokens(backbone):
    """A batch runs ``forward_batch`` images per pass (a large CPU batch is slower per
    image than batch 1); the pieces come back in order, equal to one pass of the whole."""
    pixels = torch.randn(5, 3, 224, 224)
    whole_stages, whole_global = backbone.encode_images(pixels)
    assert backbone.forward_batch >= 5  # the tiny CLIP fits the whole batch
    chunked = build()
    chunked.model.load_state_dict(backbone.model.state_dict())
    chunked.forward_batch = 2  # as ViT-L @518 on the CPU gets 1
    calls = []
    run = chunked._intermediates
    chunked._intermediates = lambda images: calls.append(len(images)) or run(images)
    stages, global_ = chunked.encode_images(pixels)
    assert calls == [2, 2, 1]
    for got, want in zip(stages + [global_], whole_stages + [whole_global]):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
