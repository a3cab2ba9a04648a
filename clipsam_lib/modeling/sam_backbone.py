"""Frozen SAM backbone: build through segment-anything's registry, embed images once.

SAM's image encoder is the expensive half of the model and does not depend on the
prompts, so ClipSAM computes one embedding per image (through ``SamPredictor``'s own
preprocessing: RGB, ``ResizeLongestSide`` to 1024, pixel normalisation, padding), which
``clipsam_lib.features`` keeps on disk. Everything after that (prompt encoder, mask
decoder) is cheap and runs per MMR variant from the cache.

Model sizes are data: ``vit_h``, ``vit_l`` and ``vit_b`` are segment-anything's own
registry entries; ``tiny`` is the same ``_build_sam`` builder with a 2-block encoder, for
tests and the smoke profile. Random initialisation happens only when the config says
``checkpoint: null``; the results rows then say ``random-init`` (provenance).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from segment_anything import SamPredictor, sam_model_registry
from segment_anything.build_sam import _build_sam
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from clipsam_lib.config import SamConfig
from clipsam_lib.devices import resolve_device
from clipsam_lib.errors import WeightsError
from clipsam_lib.modeling import BACKBONE_BUILDS
from clipsam_lib.modeling import compiled as compiled_kernels
from clipsam_lib.modeling.sam_attention import swap_attention
from clipsam_lib.weights import LOAD_ERRORS, resolve_checkpoint, weights_identity

log = logging.getLogger(__name__)

SAM_IMAGE_SIZE = 1024  # SAM's input resolution; every official size shares it
SAM_EMBED_DIM = 256


def build_sam_tiny(checkpoint: str | None = None) -> Sam:
    """segment-anything's architecture with a 2-block, 64-d image encoder.

    Prompt encoder, mask decoder, image size (1024) and embedding shape
    ``[1, 256, 64, 64]`` are SAM's own, so every transform and the decoder run unchanged.
    """
    return _build_sam(
        encoder_embed_dim=64,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=[1],
        checkpoint=checkpoint,
    )


def build_sam_mini(checkpoint: str | None = None) -> Sam:
    """segment-anything's classes at the mini size (``mini.recipes.SAM_ARCHITECTURE``).

    The project pretrains it (``clipsam pretrain-mini``) and ships the weights as fp16
    safetensors, which are loaded here into float32 parameters.
    """
    from clipsam_lib.mini.recipes import SAM_ARCHITECTURE as arch

    size, grid = arch["image_size"], arch["image_size"] // arch["patch_size"]
    dim = arch["prompt_embed_dim"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=size, patch_size=arch["patch_size"], embed_dim=arch["encoder_embed_dim"],
            depth=arch["encoder_depth"], num_heads=arch["encoder_num_heads"], mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=arch["encoder_global_attn_indexes"],
            window_size=arch["window_size"], out_chans=dim,
        ),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                     input_image_size=(size, size), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim,
                                          mlp_dim=arch["decoder_mlp_dim"],
                                          num_heads=arch["decoder_num_heads"]),
            transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    sam.eval()
    if checkpoint is not None:
        from safetensors.torch import load_file

        sam.load_state_dict({k: v.float() if v.is_floating_point() else v
                             for k, v in load_file(checkpoint).items()})
    return sam


# segment-anything's registry plus the tiny test size and the project's mini size;
# same classes, other numbers.
SAM_REGISTRY = {
    "vit_h": sam_model_registry["vit_h"],
    "vit_l": sam_model_registry["vit_l"],
    "vit_b": sam_model_registry["vit_b"],
    "tiny": build_sam_tiny,
    "mini": build_sam_mini,
}


def sam_image_size(model_type: str) -> int:
    """The input side of a model type (1024 for SAM's own sizes)."""
    if model_type == "mini":
        from clipsam_lib.mini.recipes import SAM_ARCHITECTURE

        return int(SAM_ARCHITECTURE["image_size"])
    return SAM_IMAGE_SIZE


def sam_embedding_shape(model_type: str) -> tuple[int, int, int]:
    """(channels, height, width) of the image embedding of a model type."""
    if model_type == "mini":
        from clipsam_lib.mini.recipes import SAM_ARCHITECTURE as arch

        grid = arch["image_size"] // arch["patch_size"]
        return arch["prompt_embed_dim"], grid, grid
    return SAM_EMBED_DIM, 64, 64

def resolve_sam_checkpoint(name_or_path: str) -> Path:
    """The checkpoint file (a path, or a file name searched in the weights folders).

    A missing file is a one-sentence FileNotFoundError naming the file, where it was
    looked for and where to download it (``weights.resolve_checkpoint``).
    """
    return resolve_checkpoint("sam", name_or_path)


def _check_config(cfg: SamConfig) -> None:
    if cfg.model_type not in SAM_REGISTRY:
        raise ValueError(
            f"sam.model_type {cfg.model_type!r} is not one of {sorted(SAM_REGISTRY)}."
        )
    if cfg.dtype not in ("fp32", "bf16"):
        raise ValueError(f"sam.dtype {cfg.dtype!r} is not 'fp32' or 'bf16' (load the profile "
                         "with load_profile, which resolves 'auto').")


def build_sam(cfg: SamConfig) -> Sam:
    """A frozen SAM in eval mode, built through the registry.

    ``cfg.checkpoint`` set: the weights are loaded by segment-anything's builder
    (``sam_model_registry[model_type](checkpoint=path)``). ``cfg.checkpoint = None``:
    random init from ``cfg.seed``, which must be asked for explicitly in the config; for
    the full-size models it is also warned about, since it is almost always a mistake
    outside benchmarks.
    """
    _check_config(cfg)
    builder = SAM_REGISTRY[cfg.model_type]
    if cfg.checkpoint is None:
        if cfg.model_type not in ("tiny", "mini"):
            warnings.warn(
                f"Building SAM {cfg.model_type} with random weights (sam.checkpoint is null); "
                "its masks are meaningless.",
                stacklevel=2,
            )
        log.info("SAM %s: random init, seed %d", cfg.model_type, cfg.seed)
        with _seeded(cfg.seed):
            sam = builder(checkpoint=None)
    else:
        path = resolve_sam_checkpoint(cfg.checkpoint)
        try:
            sam = builder(checkpoint=str(path))
        except LOAD_ERRORS as err:
            raise WeightsError(
                f"SAM checkpoint {path} does not load into model_type {cfg.model_type!r} "
                f"({type(err).__name__}): check that sam.model_type matches the file, or "
                "download it again."
            ) from None
    swap_attention(sam.image_encoder, cfg.attention)
    BACKBONE_BUILDS["sam"] += 1
    sam.eval()
    sam.requires_grad_(False)
    return sam


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch for random init without disturbing the caller's RNG stream."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # the CPU generator only, not CUDA's
        yield


def sam_identity(cfg: SamConfig) -> dict[str, Any]:
    """What determines SAM's image embedding: architecture, weights, dtype.

    Computed from the config alone (never builds the model), so cached embeddings can be
    read without loading SAM. The checkpoint is identified by its file name and SHA-256
    (``weights.weights_identity``, which hashes a file once and remembers it).
    """
    identity: dict[str, Any] = {
        "kind": "sam",
        "model_type": cfg.model_type,
        "image_size": sam_image_size(cfg.model_type),
        "dtype": cfg.dtype,
        "attention": cfg.attention,
        **({"compiled": True} if cfg.compile else {}),  # as clip_identity: only when on
    }
    if cfg.checkpoint is None:
        identity["weights"] = f"random-init:seed={cfg.seed}"
        return identity
    identity["weights"] = weights_identity("sam", cfg.checkpoint)
    return identity


@dataclass
class SamEmbedding:
    """SAM's image embedding and the two sizes needed to map prompts and masks.

    embedding: ``[1, 256, 64, 64]`` float32. input_size: ``(h, w)`` after
    ``ResizeLongestSide`` (before padding). original_size: ``(h, w)`` of the image.
    """

    embedding: torch.Tensor
    input_size: tuple[int, int]
    original_size: tuple[int, int]

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "embedding": self.embedding,
            "input_size": torch.tensor(self.input_size, dtype=torch.int64),
            "original_size": torch.tensor(self.original_size, dtype=torch.int64),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> SamEmbedding:
        return cls(
            embedding=tensors["embedding"].float(),
            input_size=tuple(int(v) for v in tensors["input_size"]),
            original_size=tuple(int(v) for v in tensors["original_size"]),
        )


class SamBackbone:
    """Frozen SAM whose image encoder runs once per image (``embed``).

    Arguments:
      cfg: the profile's ``sam`` section.
      device: ``cpu``, ``cuda`` or ``auto``.
      model: an already built SAM (e.g. shared with a predictor); built from cfg if None.
    """

    def __init__(self, cfg: SamConfig, device: str = "cpu", model: Sam | None = None,
                 compile_cache: str | Path | None = None):
        self.cfg = cfg
        self.device = resolve_device(device)
        if cfg.compile:
            compiled_kernels.prepare(self.device, "sam.compile", compile_cache)
        self.model = (model if model is not None else build_sam(cfg)).to(self.device)
        if cfg.compile:
            # In place (nn.Module.compile): the state-dict keys and SamPredictor's calls
            # stay the library's own.
            self.model.image_encoder.compile(dynamic=False)
        self.predictor = SamPredictor(self.model)

    @property
    def identity(self) -> dict[str, Any]:
        """The FeatureCache identity of this backbone's embeddings."""
        return sam_identity(self.cfg)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(
            device_type=self.device.type,
            dtype=torch.bfloat16,
            enabled=self.cfg.dtype == "bf16",
        )

    @torch.no_grad()
    def embed(self, image_rgb: np.ndarray) -> SamEmbedding:
        """The embedding of an RGB uint8 ``H x W x 3`` image, via ``SamPredictor.set_image``."""
        if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
            raise ValueError(
                f"SAM expects an RGB uint8 H x W x 3 image, got {image_rgb.dtype} "
                f"{image_rgb.shape}."
            )
        with self._autocast():
            self.predictor.set_image(image_rgb, image_format="RGB")
        embedding = SamEmbedding(
            embedding=self.predictor.get_image_embedding().float(),
            input_size=tuple(self.predictor.input_size),
            original_size=tuple(self.predictor.original_size),
        )
        self.predictor.reset_image()  # the embedding lives in the cache, not here
        return embedding
