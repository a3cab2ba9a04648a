"""Configuration as data.

Every choice the paper leaves open is a field here with a documented default (see
docs/switches.md and ../spec/method.md). A *profile* (``clipsam_lib/configs/<name>.yaml``)
is a partial override of these defaults; ``load_profile("smoke")`` gives the embedded
default, ``load_profile("paper")`` the paper's setting. Same code path, other values.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class ClipConfig:
    """Frozen CLIP backbone (open_clip)."""

    model_name: str = "ViT-L-14-336"  # an open_clip model name or a config in CONFIG_DIR
    # "openai" (open_clip's pretrained tag), a local checkpoint path, or None = random init.
    # Random init is only used when it is spelled out here, and results rows then say so.
    pretrained: str | None = "openai"
    image_size: int = 518  # working resolution S; positional embedding interpolated
    stages: tuple[int, ...] = (6, 12, 18, 24)  # 1-indexed residual-stream taps
    keep_underscore: bool = False  # class-name underscore switch (peer keeps it)
    # Class folder -> the object named in the sentences. MTD and KSDD2 hold one class whose
    # folder name ("mtd", "ksdd2") means nothing to CLIP; the paper does not say what its
    # prompts called them, so the names are a switch. Classes not listed keep their name.
    class_names: dict[str, str] = field(
        default_factory=lambda: {"mtd": "magnetic tile", "ksdd2": "commutator surface"}
    )
    dtype: str = "fp32"  # "fp32" | "bf16" (autocast on the backbone forward)
    seed: int = 0  # only for random init
    # Activation of the CLIP blocks (method.md section 5):
    # "peer": what APRIL-GAN's code runs: QuickGELU only for OpenAI weights at their native
    #   resolution (336 for ViT-L-14-336); at any other size its factory rebuilds the model
    #   from the JSON config, which has no quick_gelu, so exact GELU (its published 518 px
    #   results); other weights: the JSON's flag.
    # "as_trained": QuickGELU for OpenAI weights at every size (how they were trained).
    # "quick_gelu" | "gelu": forced.
    activation: str = "peer"


@dataclass
class SamConfig:
    """Frozen SAM (segment-anything)."""

    model_type: str = "vit_h"  # vit_h | vit_l | vit_b | tiny (random init only)
    checkpoint: str | None = "sam_vit_h_4b8939.pth"  # file name or path; None = random init
    dtype: str = "fp32"
    seed: int = 0


@dataclass
class UMCIConfig:
    """UMCI module switches (method.md section 2)."""

    enabled: bool = True  # False = the APRIL-GAN linear-projection baseline
    strip_path: bool = True
    scale_path: bool = True
    hidden_dim: int = 768
    kernels: tuple[int, int] = (2, 4)
    heads: int = 8
    pooling: str = "mean"  # strip pooling: "mean" | "max"
    norm: str = "none"  # LayerNorm placement on the fused feature: "none" | "pre" | "post"
    residual: bool = True  # F = X + S + P (True) or F = S + P (False)
    stage_combination: str = "mean"  # "mean" (range [0,1]) | "sum" (peer, range [0, n])
    logit_scale: float = 100.0
    # Corner convention of the bilinear upsampling of stage logits to S x S, in the maps and
    # in the training loss alike. True: APRIL-GAN's test.py and train.py (peer); False: the
    # half-pixel convention (torch's default), which stretches border cells by up to 6.5 px.
    align_corners: bool = True
    text_dim: int | None = None  # None = the CLIP model's embedding dim


@dataclass
class MMRConfig:
    """Multi-level Mask Refinement switches (method.md section 3)."""

    enabled: bool = True
    threshold: float = 0.5  # theta for binarizing the rough map
    # "absolute": B = M_c > theta (the reconstruction's default). "relative": B = M_c >
    # theta * max(M_c) per image, for rough maps on no fixed scale (random-init backbones,
    # whose trained UMCI maps can sit far below 0.5 everywhere); every map with a positive
    # maximum then gets at least one region.
    threshold_mode: str = "absolute"
    min_area: int = 0  # regions smaller than this (pixels, original size) are dropped
    box_margin: int = 0  # pixels added on each side of a region's box
    prompt_mode: str = "point+box"  # "point" | "box" | "point+box"
    fusion: str = "A"  # "A" | "B" | "C"
    mask_levels: int = 3  # how many of SAM's 3 masks (by score) are used
    fusion_lambda: float = 0.5  # fusion A weight of the SAM map
    level_weights: tuple[float, ...] = (1.0, 0.5, 0.25)  # fusion B
    decoder_batching: str = "auto"  # "auto" | "batched" | "per_prompt"
    max_regions: int = 64  # guard against a map that binarizes into noise


@dataclass
class TrainConfig:
    """UMCI training (method.md section 2, 'Training')."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 8
    seed: int = 111
    # Epochs keyed by the *training* dataset's layout (peer: 15 on VisA, 3 on MVTec-AD).
    epochs: dict[str, int] = field(default_factory=lambda: {"visa": 15, "mvtec": 3})
    mosaic_rate: float = 0.2
    mosaic_layouts: tuple[str, ...] = ("mvtec",)  # mosaic only when training on these
    focal_gamma: float = 2.0
    max_images_per_class: int | None = None  # subset for fast profiles


@dataclass
class EvalConfig:
    """Evaluation protocol (evaluation.md)."""

    protocol: str = "peer"  # "peer" (SxS) | "mvtec" (original resolution)
    sigma: float = 0.0  # Gaussian smoothing of the maps (0 = none, peer default)
    pro_variant: str = "linear200"  # "linear200" | "mvtec"
    fpr_limit: float = 0.3
    mask_threshold: float = 0.0  # source mask binarized with > this
    # How a source mask's stored values become the compared value (then > mask_threshold):
    # "luminance": PIL's convert("L") first, as APRIL-GAN (peer): palette masks go through
    #   their palette and RGB masks through 0.299 R + 0.587 G + 0.114 B, so a dark palette
    #   colour or a dark RGB mask value can turn into 0 (background);
    # "raw": the stored values (palette indices; the largest colour channel of RGB masks).
    # Identical on 0/255 grayscale masks (MVTec AD, KSDD2) and on MTD's grayscale masks.
    mask_binarization: str = "luminance"
    # Image-level anomaly score (the image columns of every table):
    # "clip_global": softmax(100 cos(global CLIP image embedding, text features))[anomalous],
    #   APRIL-GAN's zero-shot score (peer);
    # "map_max": the maximum of the evaluated map;
    # "clip_global+map_max": 0.5 (clip_global + map maximum min-max normalised over the
    #   class's test images), APRIL-GAN's few-shot combination.
    image_score: str = "clip_global"
    max_images_per_class: int | None = None


@dataclass
class DatasetSpec:
    """One dataset the profile uses."""

    name: str  # e.g. "mvtec", "visa", "synth_mvtec"
    layout: str  # "mvtec" | "visa" | "mtd" | "ksdd2"
    root: str  # relative paths are relative to the project's data dir
    split: str = "test"  # ksdd2: "test" (official) or "train" (peer-compatible)
    classes: list[str] | None = None  # None = all
    synthetic: bool = False  # built by clipsam_lib.data.synthetic


@dataclass
class Direction:
    """One zero-shot direction: train UMCI on ``train`` (test split), evaluate on ``test``.

    ``generalization`` datasets (the journal version's MTD and KSDD2) are evaluated with
    the same model only in the final tables, not in every ablation and sweep.
    """

    train: str
    test: list[str]
    generalization: list[str] = field(default_factory=list)


@dataclass
class ProfileConfig:
    name: str = "paper"
    description: str = ""
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    cache_dtype: str = "fp16"  # feature cache storage dtype: "fp16" | "bf16" | "fp32"
    data_dir: str = "data"  # relative to the project root
    cache_dir: str = "cache"
    results_dir: str = "results"
    synthetic_seed: int = 0
    synthetic_scale: str = "small"  # size preset of the embedded benchmark
    clip: ClipConfig = field(default_factory=ClipConfig)
    sam: SamConfig = field(default_factory=SamConfig)
    umci: UMCIConfig = field(default_factory=UMCIConfig)
    mmr: MMRConfig = field(default_factory=MMRConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    datasets: list[DatasetSpec] = field(default_factory=list)
    directions: list[Direction] = field(default_factory=list)
    # Sweeps for the hyper-parameter notebook (03).
    sweep_hidden_dims: list[int] = field(default_factory=lambda: [256, 512, 768, 1024])
    sweep_kernels: list[tuple[int, int]] = field(
        default_factory=lambda: [(2, 3), (2, 4), (3, 5), (4, 8)]
    )
    sweep_thresholds: list[float] = field(default_factory=lambda: [0.3, 0.4, 0.5, 0.6, 0.7])

    # -- convenience -------------------------------------------------------------------
    def dataset(self, name: str) -> DatasetSpec:
        for spec in self.datasets:
            if spec.name == name:
                return spec
        known = ", ".join(s.name for s in self.datasets)
        raise KeyError(f"Dataset {name!r} is not in profile {self.name!r} (it has: {known}).")

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def hash(self) -> str:
        """Short, stable hash of every field (provenance and cache keys)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def replace(self, **overrides: Any) -> ProfileConfig:
        """A copy with dotted overrides, e.g. ``replace(**{"umci.hidden_dim": 512})``."""
        return from_dict(_apply_dotted(self.to_dict(), overrides))


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _apply_dotted(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for key in parents:
            if key not in node or not isinstance(node[key], dict):
                raise KeyError(f"Unknown config section {key!r} in override {dotted!r}.")
            node = node[key]
        if leaf not in node:
            raise KeyError(f"Unknown config field {dotted!r}.")
        node[leaf] = value
    return out


def _build(cls: type, data: dict[str, Any] | None) -> Any:
    """Build a dataclass from a (possibly partial) dict, rejecting unknown keys."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise KeyError(f"Unknown {cls.__name__} field(s): {sorted(unknown)}.")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        default = getattr(cls(), name) if _has_defaults(cls) else None
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _has_defaults(cls: type) -> bool:
    return all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(cls)
    )


def from_dict(data: dict[str, Any]) -> ProfileConfig:
    data = dict(data)
    sections = {
        "clip": ClipConfig,
        "sam": SamConfig,
        "umci": UMCIConfig,
        "mmr": MMRConfig,
        "train": TrainConfig,
        "eval": EvalConfig,
    }
    kwargs: dict[str, Any] = {k: _build(c, data.pop(k, None)) for k, c in sections.items()}
    kwargs["datasets"] = [DatasetSpec(**d) for d in data.pop("datasets", [])]
    kwargs["directions"] = [Direction(**d) for d in data.pop("directions", [])]
    if "sweep_kernels" in data:
        data["sweep_kernels"] = [tuple(k) for k in data["sweep_kernels"]]
    profile = _build(ProfileConfig, data)
    for key, value in kwargs.items():
        setattr(profile, key, value)
    return profile


def available_profiles() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_profile(name_or_path: str | Path, **overrides: Any) -> ProfileConfig:
    """Load a profile by name (``smoke``, ``paper``, ``cpu_subset``) or YAML path.

    ``overrides`` are dotted keys, e.g. ``load_profile("smoke", **{"umci.hidden_dim": 256})``.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"Profile {str(name_or_path)!r} not found at {path}; "
            f"available profiles: {', '.join(available_profiles())}."
        )
    data = yaml.safe_load(path.read_text()) or {}
    data.setdefault("name", path.stem)
    profile = from_dict(data)
    return profile.replace(**overrides) if overrides else profile
