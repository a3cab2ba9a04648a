"""The frozen CLIP backbone: patch tokens of the tapped stages, and prompt-ensemble text.

Built by open_clip's own factory from a model name: ``ViT-L-14-336`` for the paper, the
tiny ``clipsam-tiny-vit`` (``clipsam_lib/configs/clipsam-tiny-vit.json``, registered here
with ``open_clip.add_model_config``) for tests and the embedded default. Same code path,
another configuration.

Resolution: ``force_image_size`` builds the vision tower at ``cfg.image_size``; when a
checkpoint trained at another size is loaded, open_clip's ``load_checkpoint`` resizes the
positional-embedding grid bicubically (24x24 -> 37x37 for ViT-L/14 at 518). With random
init the grid is simply created at the working size.

Stage tokens come from the vision tower's ``forward_intermediates``: the residual stream
after the configured 1-indexed blocks, before ``ln_post``, class token dropped.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

from clipsam_lib.config import CHOICES, CONFIG_DIR, ClipConfig
from clipsam_lib.devices import clip_extraction_batch, resolve_device
from clipsam_lib.errors import WeightsError
from clipsam_lib.modeling import BACKBONE_BUILDS, text_prompts
from clipsam_lib.modeling import compiled as compiled_kernels
from clipsam_lib.modeling.clip_attention import resolve_attention, swap_attention
from clipsam_lib.weights import (
    KNOWN_CHECKPOINTS,
    LOAD_ERRORS,
    RANDOM_INIT,
    resolve_checkpoint,
    weights_dirs,
    weights_identity,
)

# Model sizes are data: every open_clip JSON config in the package's config folder.
open_clip.add_model_config(CONFIG_DIR)

OPENAI_MEAN = open_clip.OPENAI_DATASET_MEAN
OPENAI_STD = open_clip.OPENAI_DATASET_STD
PREPROCESS_ID = "pil-bicubic-squash|openai-mean-std"
DTYPES = ("fp32", "bf16")  # what a built backbone runs; "auto" is resolved by load_profile
_TEXT_BATCH = 128


def normalise_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., 3, S, S]`` -> float, scaled to [0, 1] and OpenAI mean/std normalised."""
    mean = torch.tensor(OPENAI_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(3, 1, 1)
    return (pixels.float() / 255 - mean) / std


def pretrained_tag_config(cfg: ClipConfig) -> dict[str, Any] | None:
    """open_clip's config for ``cfg.pretrained`` when it is a tag (e.g. ``"openai"``)."""
    if cfg.pretrained is None:
        return None
    tag_cfg = open_clip.get_pretrained_cfg(cfg.model_name, cfg.pretrained)
    return tag_cfg or None


ACTIVATIONS = CHOICES["clip.activation"]


def _openai_weights(cfg: ClipConfig) -> bool:
    """Whether the weights are OpenAI's: the ``openai`` tag, or a local file of a model that
    has that tag (the only local CLIP file this project documents is OpenAI's archive)."""
    if cfg.pretrained is None:
        return False
    if cfg.pretrained == "openai":
        return True
    is_tag = pretrained_tag_config(cfg) is not None
    return not is_tag and bool(open_clip.get_pretrained_cfg(cfg.model_name, "openai"))


def uses_quick_gelu(cfg: ClipConfig) -> bool:
    """The activation ``clip.activation`` resolves to (True = QuickGELU, False = GELU).

    "peer" follows APRIL-GAN's vendored factory: OpenAI weights at the model's native size
    are loaded as OpenAI's own model (QuickGELU); at any other size the model is rebuilt
    from its JSON config, which for ViT-L-14-336 has no ``quick_gelu`` (exact GELU).
    """
    if cfg.activation not in ACTIVATIONS:
        raise ValueError(f"clip.activation must be one of {ACTIVATIONS}, not {cfg.activation!r}.")
    if cfg.activation in ("quick_gelu", "gelu"):
        return cfg.activation == "quick_gelu"
    json_flag = bool(_base_model_config(cfg).get("quick_gelu", False))
    if not _openai_weights(cfg):
        return json_flag
    if cfg.activation == "as_trained":
        return True
    native = _base_model_config(cfg)["vision_cfg"]["image_size"]
    return True if cfg.image_size == native else json_flag


def _base_model_config(cfg: ClipConfig) -> dict[str, Any]:
    model_cfg = open_clip.get_model_config(cfg.model_name)
    if model_cfg is None:
        raise ValueError(
            f"CLIP model {cfg.model_name!r} is neither an open_clip model nor a JSON config "
            f"in {CONFIG_DIR}; use one of open_clip.list_models()."
        )
    return model_cfg


def model_config(cfg: ClipConfig) -> dict[str, Any]:
    """The architecture as built: open_clip's JSON with the working size and activation."""
    model_cfg = _base_model_config(cfg)
    model_cfg["vision_cfg"]["image_size"] = cfg.image_size
    model_cfg["quick_gelu"] = uses_quick_gelu(cfg)
    return model_cfg


def weights_source(cfg: ClipConfig) -> str:
    """What the weights are: ``random-init(seed=..)``, an open_clip tag + its source, or a
    local file name + SHA-256 prefix."""
    if cfg.pretrained is None:
        return f"{RANDOM_INIT}(seed={cfg.seed})"
    tag_cfg = pretrained_tag_config(cfg)
    if tag_cfg is not None:
        return f"open_clip:{cfg.pretrained}:{tag_cfg.get('hf_hub') or tag_cfg.get('url')}"
    return weights_identity("clip", cfg.pretrained)


def clip_identity(cfg: ClipConfig) -> dict[str, Any]:
    """Everything that determines the cached CLIP outputs (the FeatureCache identity).

    Computable without building the model, so readers of the cache need no backbone.
    """
    if cfg.dtype not in DTYPES:
        raise ValueError(f"clip.dtype must be one of {DTYPES}, not {cfg.dtype!r}.")
    attention = resolve_attention(cfg.attention, cfg.dtype)
    return {
        "family": "open_clip",
        "open_clip_version": open_clip.__version__,
        "model_name": cfg.model_name,
        "model_config": model_config(cfg),
        "image_size": cfg.image_size,
        "stages": list(cfg.stages),
        "weights": weights_source(cfg),
        "dtype": cfg.dtype,
        "preprocess": PREPROCESS_ID,
        # Compiled kernels round differently (fused sums): named only when on, so the
        # eager caches keep their keys.
        **({"compiled": True} if cfg.compile else {}),
        # Head by head rounds the bf16 softmax differently from the fused kernel.
        **({"attention": attention} if attention != "library" else {}),
    }


class ClipBackbone:
    """Frozen open_clip model: ``preprocess`` -> ``encode_stages``; ``text_features``."""

    def __init__(self, cfg: ClipConfig, device: str | torch.device = "cpu",
                 compile_cache: str | Path | None = None):
        self.cfg = cfg
        self.device = resolve_device(device)
        self.identity = clip_identity(cfg)  # validates dtype and model name first
        if cfg.compile:
            compiled_kernels.prepare(self.device, "clip.compile", compile_cache)
        self.model = _build_model(cfg, self.device)
        run_sequence_first(self.model)
        self.attention = resolve_attention(cfg.attention, cfg.dtype)
        swap_attention(self.model.visual, self.attention)
        BACKBONE_BUILDS["clip"] += 1
        self.model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(cfg.model_name)
        visual = self.model.visual
        self.patch_size = visual.patch_size[0]
        self.grid_size = cfg.image_size // self.patch_size
        self.width = visual.conv1.out_channels  # C of the stage tokens
        self.embed_dim = self.model.text_projection.shape[1]  # D of the text features
        n_blocks = len(visual.transformer.resblocks)
        if not all(1 <= s <= n_blocks for s in cfg.stages):
            raise ValueError(
                f"clip.stages {list(cfg.stages)} must be 1-indexed blocks of "
                f"{cfg.model_name}, which has {n_blocks}."
            )
        self._text_cache: dict[str, torch.Tensor] = {}
        self._intermediates = compiled_kernels.compiled(self._run_visual, cfg.compile)
        # Images per forward pass: a larger batch is split, because on the CPU one pass of
        # many ViT-L images runs slower per image than batch 1 (devices.CPU_BATCH_BYTES
        # gives the measurement; split, batch 8 ran 0.96-1.01x batch 1's time per image,
        # fp32 and bf16).
        self.forward_batch = clip_extraction_batch(self.device, self.grid_size ** 2 + 1,
                                                   self.width)

    # -- images ----------------------------------------------------------------------------
    def preprocess(self, image_rgb: np.ndarray) -> torch.Tensor:
        """RGB uint8 ``H x W x 3`` -> normalised ``3 x S x S`` float tensor.

        Bicubic resize to S x S without keeping the aspect ratio (PIL, as the peer's
        torchvision ``Resize((S, S))`` on PIL images), OpenAI mean/std.
        """
        if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
            raise ValueError(
                f"Expected an RGB uint8 H x W x 3 image, got {image_rgb.dtype} "
                f"{tuple(image_rgb.shape)}."
            )
        size = self.cfg.image_size
        resized = Image.fromarray(image_rgb).resize((size, size), Image.BICUBIC)
        return normalise_pixels(torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1))

    def encode_images(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``[B, 3, S, S]`` -> (one float32 ``[B, g*g, C]`` per tapped stage, the float32
        ``[B, D]`` global image embedding: ``ln_post`` of the class token, projected).

        One forward pass gives both; the global embedding is the image-level score's input
        (``eval.image_score: clip_global``). Runs ``forward_batch`` images at a time.
        """
        chunks = []
        with torch.no_grad():
            for start in range(0, len(images), self.forward_batch):
                out = self._intermediates(images[start:start + self.forward_batch]
                                          .to(self.device))
                chunks.append(([t.float() for t in out["image_intermediates"]],
                               out["image_features"].float()))
        if len(chunks) == 1:
            return chunks[0]
        stages = [torch.cat(parts) for parts in zip(*(c[0] for c in chunks))]
        return stages, torch.cat([c[1] for c in chunks])

    def _run_visual(self, images: torch.Tensor) -> dict[str, Any]:
        # Autocast inside, so a compiled graph holds the casts it fuses.
        with self._autocast():
            return self.model.visual.forward_intermediates(
                images, indices=[s - 1 for s in self.cfg.stages], output_fmt="NLC")

    def encode_stages(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``[B, 3, S, S]`` -> one float32 ``[B, g*g, C]`` tensor per tapped stage."""
        return self.encode_images(images)[0]

    def image_tokens(self, image_rgb: np.ndarray) -> list[torch.Tensor]:
        """One image -> one ``[g*g, C]`` tensor per stage (convenience for predictors)."""
        return [t[0] for t in self.encode_stages(self.preprocess(image_rgb)[None])]

    # -- text ------------------------------------------------------------------------------
    def text_features(self, class_names: list[str]) -> torch.Tensor:
        """``[n, 2, D]`` unit-norm prompt-ensemble features (0 = normal, 1 = anomalous).

        Each sentence is encoded and L2-normalised, averaged per state group, and the mean
        re-normalised. Computed once per displayed class name and kept.
        """
        rows = []
        for name in class_names:
            shown = text_prompts.display_name(
                name, self.cfg.keep_underscore, self.cfg.class_names
            )
            if shown not in self._text_cache:
                normal, anomalous = text_prompts.state_sentences(shown)
                self._text_cache[shown] = torch.stack(
                    [self._ensemble(normal), self._ensemble(anomalous)]
                )
            rows.append(self._text_cache[shown])
        return torch.stack(rows)

    def _ensemble(self, sentences: list[str]) -> torch.Tensor:
        chunks = []
        with torch.no_grad(), self._autocast():
            for start in range(0, len(sentences), _TEXT_BATCH):
                tokens = self.tokenizer(sentences[start:start + _TEXT_BATCH]).to(self.device)
                chunks.append(self.model.encode_text(tokens).float())
        per_sentence = F.normalize(torch.cat(chunks), dim=-1)
        return F.normalize(per_sentence.mean(0), dim=-1).cpu()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.dtype == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def _build_model(cfg: ClipConfig, device: torch.device) -> torch.nn.Module:
    """open_clip's factory, with the weights source decided by ``cfg.pretrained``."""
    common = {
        "force_image_size": cfg.image_size,
        "quick_gelu": uses_quick_gelu(cfg),  # exact, either way (a model-config override)
        "device": device,
        "precision": "fp32",
    }
    if cfg.pretrained is None:
        warnings.warn(
            f"CLIP {cfg.model_name} is randomly initialised (clip.pretrained is None, "
            f"seed {cfg.seed}); results say 'random-init'.",
            stacklevel=3,
        )
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(cfg.seed)  # CPU init; CUDA RNG untouched
            return open_clip.create_model(cfg.model_name, pretrained=None, **common)
    tag_cfg = pretrained_tag_config(cfg)
    if tag_cfg is not None:
        try:
            with warnings.catch_warnings():
                # The activation is chosen on purpose (clip.activation): not a mismatch.
                warnings.filterwarnings("ignore", message="QuickGELU mismatch")
                return open_clip.create_model(
                    cfg.model_name, pretrained=cfg.pretrained, require_pretrained=True, **common
                )
        except Exception as err:  # any hub/download failure -> one clear sentence
            raise WeightsError(_tag_failure_message(cfg, tag_cfg, err)) from err
    path = resolve_checkpoint("clip", cfg.pretrained)
    # OpenAI's own file is a TorchScript archive, which torch only loads with
    # weights_only=False; allow that only for known files whose SHA-256 was just verified.
    trusted = path.name in KNOWN_CHECKPOINTS
    try:
        return open_clip.create_model(
            cfg.model_name, pretrained=str(path), weights_only=not trusted, **common
        )
    except LOAD_ERRORS as err:
        raise WeightsError(
            f"CLIP checkpoint {path} does not load into {cfg.model_name} "
            f"({type(err).__name__}): it is corrupt, another model's, or an archive this "
            "project does not know (only files with a published SHA-256 are unpickled; "
            "nothing is loaded with weights_only=False); download it again or fix "
            "clip.pretrained."
        ) from None


def run_sequence_first(model: torch.nn.Module) -> torch.nn.Module:
    """Run open_clip's transformers sequence-first (L, N, D), a layout open_clip supports.

    Batch-first, ``nn.MultiheadAttention`` transposes its input before the in-projection,
    and a bf16 ``F.linear`` on that non-contiguous 3-D view is ~700x slower on the CPU
    than on a contiguous one (measured: 15.6 s vs 0.02 s for 2 x 1370 x 1024 tokens), so
    a bf16 batch of 2 or more took 55x longer per image than batch 1 (issue 14).
    Sequence-first, the stack transposes once, contiguously, and the attention sees
    contiguous input. Same weights, same values (fp32 relative difference ~4e-7).
    """
    for transformer in (model.visual.transformer, getattr(model, "transformer", None)):
        if transformer is None or not hasattr(transformer, "batch_first"):
            continue
        transformer.batch_first = False
        for block in transformer.resblocks:
            if isinstance(getattr(block, "attn", None), torch.nn.MultiheadAttention):
                block.attn.batch_first = False
    return model


def _tag_failure_message(cfg: ClipConfig, tag_cfg: dict[str, Any], err: Exception) -> str:
    source = tag_cfg.get("hf_hub") or tag_cfg.get("url")
    url = tag_cfg.get("url")
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    alternative = (
        f", or download {url} into {weights_dirs()[0]} and set clip.pretrained to "
        f"{url.rsplit('/', 1)[-1]!r}" if url else ""
    )
    return (
        f"open_clip could not load the {cfg.model_name} weights '{cfg.pretrained}' from "
        f"{source} ({type(err).__name__}, HF_HUB_OFFLINE {'set' if offline else 'not set'}): "
        f"run once with network access so the Hugging Face cache holds them{alternative}."
    )


def clip_patch_size(cfg: ClipConfig) -> int:
    """The configured model's patch size, without building it."""
    return int(model_config(cfg)["vision_cfg"]["patch_size"])


def clip_dims(cfg: ClipConfig) -> tuple[int, int]:
    """(token width C, text embedding D) of the configured model, without building it."""
    model_cfg = model_config(cfg)
    return int(model_cfg["vision_cfg"]["width"]), int(model_cfg["embed_dim"])
