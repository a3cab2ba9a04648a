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
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clipsam_lib.errors import ProfileNotFound, UserError

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(UserError, ValueError):
    """A profile value (or file) the user can fix: one sentence naming the key and the fix."""


# Every enumerated setting: dotted key -> allowed values (the modules read these too).
CHOICES: dict[str, tuple[Any, ...]] = {
    "device": ("auto", "cpu", "cuda", "mps"),
    "cache_dtype": ("fp16", "bf16", "fp32"),
    "synthetic_scale": ("tiny", "small", "medium", "rehearsal"),  # data.synthetic.SCALES
    "clip.dtype": ("fp32", "bf16", "auto"),  # auto: devices.resolve_dtype, at load time
    "clip.activation": ("peer", "as_trained", "quick_gelu", "gelu"),
    "sam.model_type": ("vit_h", "vit_l", "vit_b", "tiny", "mini"),
    "sam.dtype": ("fp32", "bf16", "auto"),
    "sam.attention": ("library", "sdpa"),  # modeling.sam_attention
    "clip.attention": ("auto", "library", "headwise"),  # modeling.clip_attention
    "umci.pooling": ("mean", "max"),
    "umci.norm": ("none", "pre", "post"),
    "umci.stage_combination": ("mean", "sum"),
    "mmr.threshold_mode": ("absolute", "relative"),
    "mmr.prompt_mode": ("point", "box", "point+box"),
    "mmr.fusion": ("A", "B", "C"),
    "mmr.mask_levels": (1, 2, 3),
    "mmr.decoder_batching": ("auto", "batched", "per_prompt"),
    "eval.protocol": ("peer", "mvtec"),
    "eval.pro_variant": ("linear200", "mvtec"),
    "eval.mask_binarization": ("raw", "luminance"),
    "eval.image_score": ("clip_global", "map_max", "clip_global+map_max"),
    "datasets.layout": ("mvtec", "visa", "mtd", "ksdd2", "folder"),
    "datasets.split": ("test", "train"),
}
# Fields added after results were committed, with the value at which they compute what the
# code did before them: at that value they are left out of the hashes (ProfileConfig.hash,
# train.run_key), so those results, caches and UMCI runs keep their keys.
HASH_OMITTED_AT: dict[str, Any] = {"train.focal_smooth": 0.0}


def hashed_fields(section: str, fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` of ``section`` without those at their ``HASH_OMITTED_AT`` value."""
    omitted = {key.split(".", 1)[1]: value for key, value in HASH_OMITTED_AT.items()
               if key.startswith(section + ".")}
    return {name: value for name, value in fields.items()
            if not (name in omitted and value == omitted[name])}


# Numeric ranges: dotted key -> (low, high, low inclusive, high inclusive).
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "clip.image_size": (1, float("inf"), True, True),
    "umci.hidden_dim": (1, float("inf"), True, True),
    "umci.heads": (1, float("inf"), True, True),
    "umci.logit_scale": (0, float("inf"), False, True),
    # theta >= 1 leaves no region (M_c <= 1): MMR would be silently off.
    "mmr.threshold": (0, 1, True, False),
    "mmr.min_area": (0, float("inf"), True, True),
    "mmr.box_margin": (0, float("inf"), True, True),
    "mmr.fusion_lambda": (0, 1, True, True),
    "mmr.max_regions": (1, float("inf"), True, True),
    "train.lr": (0, float("inf"), False, True),
    "train.batch_size": (1, float("inf"), True, True),
    "train.mosaic_rate": (0, 1, True, True),
    "train.focal_gamma": (0, float("inf"), True, True),
    "train.focal_smooth": (0, 1, True, False),
    "train.max_images_per_class": (1, float("inf"), True, True),
    "train.token_memory_gb": (0, float("inf"), True, True),
    "eval.sigma": (0, float("inf"), True, True),
    "eval.fpr_limit": (0, 1, False, True),
    "eval.mask_threshold": (0, float("inf"), True, True),
    "eval.max_images_per_class": (1, float("inf"), True, True),
}


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
    dtype: str = "fp32"  # "fp32" | "bf16" (autocast on the backbone forward) | "auto"
    seed: int = 0  # only for random init
    # Activation of the CLIP blocks (method.md section 5):
    # "peer": what APRIL-GAN's code runs: QuickGELU only for OpenAI weights at their native
    #   resolution (336 for ViT-L-14-336); at any other size its factory rebuilds the model
    #   from the JSON config, which has no quick_gelu, so exact GELU (its published 518 px
    #   results); other weights: the JSON's flag.
    # "as_trained": QuickGELU for OpenAI weights at every size (how they were trained).
    # "quick_gelu" | "gelu": forced.
    activation: str = "peer"
    # Image-tower attention (modeling.clip_attention): "library" = open_clip's module
    # (PyTorch's fused kernel); "headwise" = the same computation head by head on the CPU
    # (2x faster there in bf16), the fused kernel elsewhere; "auto" = headwise in bf16.
    attention: str = "auto"
    # torch.compile of the image tower (modeling.compiled): a compilation per batch shape
    # at the first call, cached on disk under the cache folder; bench/backbones.py says
    # whether it pays on this machine.
    compile: bool = False


@dataclass
class SamConfig:
    """Frozen SAM (segment-anything)."""

    model_type: str = "vit_h"  # vit_h | vit_l | vit_b | tiny (random init) | mini (project)
    checkpoint: str | None = "sam_vit_h_4b8939.pth"  # file name or path; None = random init
    dtype: str = "fp32"
    # Image-encoder attention: "sdpa" = segment-anything's computation fused through
    # scaled_dot_product_attention (modeling.sam_attention; same weights, relative error
    # ~4e-7; measured on SAM ViT-H on 2-core CPUs 1.53x faster in fp32, 0.87-1.25x in
    # bf16 over three runs, bench/backbones.py);
    # "library" = segment-anything's own module.
    attention: str = "sdpa"
    compile: bool = False  # torch.compile of the image encoder (modeling.compiled)
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
    # APRIL-GAN's focal loss smooths its one-hot target and adds this to p_t before the log
    # (its FocalLoss, smooth 1e-5), which bounds what a confidently wrong pixel costs and stops
    # its gradient. 0: the exact log-probability (train.focal_loss).
    focal_smooth: float = 1e-5
    max_images_per_class: int | None = None  # subset for fast profiles
    # Seed variance: train (and evaluate) once per seed; tables report the mean and the
    # standard deviation over seeds, the per-seed rows stay in the *_per_seed / long CSVs.
    # None: the one seed above.
    seeds: list[int] | None = None
    # Also evaluate these epochs' checkpoints (notebook 04's final_epochs table), to show
    # how much the epoch choice moves the numbers. None: the last epoch only.
    eval_epochs: list[int] | None = None
    # RAM for the training tokens, kept in the cache's compact dtype (GiB); beyond it they
    # are read from the cache when used. None: half of the memory available at the start.
    token_memory_gb: float | None = None


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
    # layout "folder" (your own data, anomalib's convention): sub-folders of the root
    normal: str = "good"
    abnormal: list[str] = field(default_factory=lambda: ["bad"])
    masks: str | None = None  # None: no masks, image-level evaluation only

    def folder_options(self) -> dict[str, Any] | None:
        if self.layout != "folder":
            return None
        return {"normal": self.normal, "abnormal": list(self.abnormal), "masks": self.masks}


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
    device: str = "auto"  # "auto" (CUDA, then Apple MPS, then CPU) | "cpu" | "cuda" | "mps"
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
    # Other draws (synthetic seeds) of the embedded benchmark for notebook 02's spread
    # tables (clipsam_lib.draws); skipped, and said, where a dataset is not synthetic (a
    # smoke profile pointed at the user's own folders keeps working).
    spread_draws: list[int] = field(default_factory=list)

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
        data = self.to_dict()
        for section in {key.split(".")[0] for key in HASH_OMITTED_AT}:
            data[section] = hashed_fields(section, data[section])
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def replace(self, **overrides: Any) -> ProfileConfig:
        """A copy with dotted overrides, e.g. ``replace(**{"umci.hidden_dim": 512})``."""
        try:
            data = _apply_dotted(self.to_dict(), overrides)
        except KeyError as err:
            raise ConfigError(f"profile {self.name} override: {err.args[0]}") from None
        return from_dict(data, source=f"profile {self.name} with {overrides}")


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
                raise KeyError(f"unknown config section {key!r} in override {dotted!r}.")
            node = node[key]
        if leaf not in node:
            raise KeyError(f"unknown config field {dotted!r}.")
        node[leaf] = value
    return out


def _build(cls: type, data: dict[str, Any] | None, strict: bool = False) -> Any:
    """Build a dataclass from a (possibly partial) dict, rejecting unknown keys.

    ``strict``: the fields without a default must be given (datasets, directions).
    """
    if data is not None and not isinstance(data, dict):
        raise KeyError(f"the {cls.__name__} entry {data!r} is not a mapping of fields.")
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise KeyError(f"unknown {cls.__name__} field(s) {sorted(unknown)}; the fields are "
                       f"{', '.join(fields)}.")
    required = [name for name, f in fields.items() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in data] if strict else []
    if missing:
        raise KeyError(f"the {cls.__name__} entry {data!r} lacks {', '.join(missing)}.")
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


SECTIONS = {
    "clip": ClipConfig,
    "sam": SamConfig,
    "umci": UMCIConfig,
    "mmr": MMRConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
}


def from_dict(data: dict[str, Any], source: str = "profile") -> ProfileConfig:
    """Build and validate a profile; ``source`` (a file, "override") names it in errors."""
    data = dict(data)
    try:
        kwargs: dict[str, Any] = {k: _build(c, data.pop(k, None)) for k, c in SECTIONS.items()}
        kwargs["datasets"] = [_build(DatasetSpec, d, strict=True) for d in data.pop("datasets", [])]
        kwargs["directions"] = [_build(Direction, d, strict=True)
                                for d in data.pop("directions", [])]
        if "sweep_kernels" in data:
            data["sweep_kernels"] = [tuple(k) for k in data["sweep_kernels"]]
        profile = _build(ProfileConfig, data)
    except (KeyError, TypeError) as err:
        message = err.args[0] if err.args else str(err)
        raise ConfigError(f"{source}: {message}") from None
    for key, value in kwargs.items():
        setattr(profile, key, value)
    problems = validate(profile)
    if problems:
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))
    _resolve_auto_dtypes(profile)
    return profile


def _resolve_auto_dtypes(profile: ProfileConfig) -> None:
    """``dtype: auto`` becomes what this machine's device runs faster (bf16 or fp32), so
    the profile's hash, the cache keys and every results row name the dtype really used."""
    if "auto" in (profile.clip.dtype, profile.sam.dtype):
        from clipsam_lib.devices import resolve_dtype

        profile.clip.dtype = resolve_dtype(profile.clip.dtype, profile.device)
        profile.sam.dtype = resolve_dtype(profile.sam.dtype, profile.device)


# -- validation --------------------------------------------------------------------------------


def validate(profile: ProfileConfig) -> list[str]:
    """Every problem of a profile, one sentence each (key, bad value, what is allowed)."""
    problems = _check_fields(profile, ProfileConfig, "")
    for name, cls in SECTIONS.items():
        problems += _check_fields(getattr(profile, name), cls, f"{name}.")
    for i, spec in enumerate(profile.datasets):
        problems += _check_fields(spec, DatasetSpec, "datasets.", f"datasets[{i}].")
    for i, direction in enumerate(profile.directions):
        problems += _check_fields(direction, Direction, "directions.", f"directions[{i}].")
    return problems + _cross_checks(profile)


def _check_fields(obj: Any, cls: type, key_prefix: str, shown_prefix: str | None = None
                  ) -> list[str]:
    hints = typing.get_type_hints(cls)
    problems = []
    for f in dataclasses.fields(cls):
        if f.name in SECTIONS or f.name in ("datasets", "directions"):
            continue
        key, shown = key_prefix + f.name, (shown_prefix or key_prefix) + f.name
        value = getattr(obj, f.name)
        if not _type_ok(value, hints[f.name]):
            problems.append(f"{shown} = {value!r} must be {_describe(hints[f.name])}"
                            f"{_yaml_exponent_hint(value)}.")
        elif key in CHOICES and value not in CHOICES[key] and not _numbered_cuda(key, value):
            allowed = ", ".join(repr(c) for c in CHOICES[key])
            problems.append(f"{shown} = {value!r} must be one of {allowed}.")
        elif key in RANGES and value is not None and not _in_range(value, RANGES[key]):
            problems.append(f"{shown} = {value!r} must be {_range_words(RANGES[key])}.")
    return problems


def _cross_checks(profile: ProfileConfig) -> list[str]:
    problems = []
    umci, mmr, train = profile.umci, profile.mmr, profile.train
    if _positive_int(umci.hidden_dim) and _positive_int(umci.heads) and umci.hidden_dim % umci.heads:
        problems.append(f"umci.hidden_dim = {umci.hidden_dim} is not divisible by umci.heads = "
                        f"{umci.heads}; pick a multiple of the heads.")
    if not (len(umci.kernels) == 2 and all(_positive_int(k) for k in umci.kernels)):
        problems.append(f"umci.kernels = {list(umci.kernels)!r} is not two positive integers.")
    if not (profile.clip.stages and all(_positive_int(s) for s in profile.clip.stages)):
        problems.append(f"clip.stages = {list(profile.clip.stages)!r} is not a non-empty list of "
                        "1-indexed block numbers.")
    if not (len(train.betas) == 2 and all(_number(b) and 0 <= b < 1 for b in train.betas)):
        problems.append(f"train.betas = {list(train.betas)!r} is not two numbers in [0, 1).")
    for layout, epochs in train.epochs.items():
        if layout not in CHOICES["datasets.layout"] or not _positive_int(epochs):
            problems.append(f"train.epochs[{layout!r}] = {epochs!r}: keys are layouts "
                            f"({', '.join(CHOICES['datasets.layout'])}), values epochs >= 1.")
    if mmr.mask_levels in CHOICES["mmr.mask_levels"] and len(mmr.level_weights) < mmr.mask_levels:
        problems.append(f"mmr.level_weights = {list(mmr.level_weights)!r} has fewer weights than "
                        f"mmr.mask_levels = {mmr.mask_levels}.")
    for i, spec in enumerate(profile.datasets):
        for key in ("name", "root"):
            if isinstance(getattr(spec, key), str) and not getattr(spec, key).strip():
                problems.append(f"datasets[{i}].{key} is empty; give the dataset a {key}.")
    names = [spec.name for spec in profile.datasets]
    for name in {n for n in names if names.count(n) > 1}:
        problems.append(f"datasets: the name {name!r} is used twice; give each dataset its own.")
    for i, direction in enumerate(profile.directions):
        for role, used in (("train", [direction.train]), ("test", direction.test),
                           ("generalization", direction.generalization)):
            for name in used:
                if name not in names:
                    problems.append(f"directions[{i}].{role} names dataset {name!r}, which is "
                                    f"not in datasets ({', '.join(names) or 'none'}).")
        layout = next((s.layout for s in profile.datasets if s.name == direction.train), None)
        if layout is not None and layout not in train.epochs:
            problems.append(f"train.epochs has no entry for layout {layout!r}, which "
                            f"directions[{i}] trains on.")
    return problems


def _numbered_cuda(key: str, value: Any) -> bool:
    """``device: cuda:1`` names one GPU of several."""
    return key == "device" and isinstance(value, str) and re.fullmatch(r"cuda:\d+", value) is not None


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_ok(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return _number(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(_type_ok, value, args))
        return all(_type_ok(v, args[0]) for v in value) if args else True
    if origin is dict:
        return isinstance(value, dict) and all(
            _type_ok(k, args[0]) and _type_ok(v, args[1]) for k, v in value.items())
    return True


def _yaml_exponent_hint(value: Any) -> str:
    """YAML reads ``1e-5`` (no dot) as text: say how to write it as a number."""
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+[eE][-+]?\d+", value.strip()):
        mantissa, exponent = re.split("[eE]", value.strip())
        return f" (YAML reads {value} as text; write {mantissa}.0e{exponent})"
    return ""


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             type(None): "null"}
    if hint in words:
        return words[hint]
    if origin in (tuple, list):
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s"
    if origin is dict:
        return f"a mapping of {_describe(args[0])} to {_describe(args[1])}"
    return str(hint)


def _in_range(value: float, bounds: tuple[float, float, bool, bool]) -> bool:
    low, high, low_in, high_in = bounds
    return (low <= value if low_in else low < value) and (value <= high if high_in else value < high)


def _range_words(bounds: tuple[float, float, bool, bool]) -> str:
    low, high, low_in, high_in = bounds
    if high == float("inf"):
        return f"{'>=' if low_in else '>'} {low:g}"
    return f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


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
        raise ProfileNotFound(
            f"Profile {str(name_or_path)!r} not found at {path}; "
            f"available profiles: {', '.join(available_profiles())}."
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"Profile {path} is not valid YAML{where} ({getattr(err, 'problem', err)}); fix "
            "the file."
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"Profile {path} holds a {type(data).__name__}, not a mapping of "
                          "sections (clip:, umci:, ...); fix the file.")
    data.setdefault("name", path.stem)
    profile = from_dict(data, source=str(path))
    return profile.replace(**overrides) if overrides else profile
