"""Preflight: everything a run will need, checked in seconds, before any work starts.

``preflight(profile)`` checks, without building a model or touching a GPU:

- the weights the profile names: local files found and, for the files this project knows,
  hash-checked; other local files must at least be PyTorch checkpoints; an open_clip tag
  must be loadable from open_clip's cache (or, with a network, downloadable);
- every dataset root: indexed (image headers read), or, with ``deep``, every image and
  mask decoded fully, so a truncated file is found before the run and not in it;
  synthetic datasets not yet built are left to notebook 00, which builds them;
- the cache and results folders: writable, with free space for what the run will write
  (estimated from the tensor shapes and image counts);
- stale staging folders of killed downloads or benchmark builds beside the dataset roots:
  removed, and said so.

It returns a :class:`Preflight` report (what the run would use and need, and every
problem, one line each); ``report.raise_for_problems()`` stops with all of them at once.
``clipsam check --profile P`` prints the report; ``clipsam run`` and every notebook's
first cell call it before anything else.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from clipsam_lib import paths
from clipsam_lib.config import ProfileConfig
from clipsam_lib.errors import PreflightFailed, UserError
from clipsam_lib.io_utils import remove_stale_staging

GIB = 2**30


@dataclass
class Preflight:
    """What a run of the profile would use and need; ``problems`` say what stops it."""

    profile: str
    weights: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    disk: list[str] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        out = [f"profile {self.profile}"]
        for title, items in (("weights", self.weights), ("datasets", self.datasets),
                             ("disk", self.disk), ("removed", self.cleaned)):
            out += [f"{title}: {item}" for item in items]
        out += [f"problem: {p}" for p in self.problems] or ["no problem found"]
        return out

    def raise_for_problems(self) -> Preflight:
        if self.problems:
            raise PreflightFailed(
                f"profile {self.profile}: {len(self.problems)} problem(s) before any work:\n"
                + "\n".join(f"- {p}" for p in self.problems))
        return self


def preflight(profile: ProfileConfig, *, deep: bool = False) -> Preflight:
    """Check everything ``profile``'s run needs (see the module doc); never raises for a
    problem it can name, it lists it."""
    report = Preflight(profile.name)
    _check_weights(profile, report)
    _check_compiler(profile, report)
    images, pixels = _check_datasets(profile, report, deep)
    _check_folders(profile, report, images, pixels)
    return report


# -- weights ---------------------------------------------------------------------------------


def _check_weights(profile: ProfileConfig, report: Preflight) -> None:
    from clipsam_lib.modeling.clip_backbone import pretrained_tag_config

    clip = profile.clip
    if clip.pretrained is None:
        report.weights.append(f"CLIP {clip.model_name}: random init (clip.pretrained: null)")
    elif pretrained_tag_config(clip):
        _check_clip_tag(profile, report)
    else:
        _check_file(report, "clip", clip.pretrained, f"CLIP {clip.model_name}")
    sam = profile.sam
    if sam.checkpoint is None:
        report.weights.append(f"SAM {sam.model_type}: random init (sam.checkpoint: null)")
    else:
        _check_file(report, "sam", sam.checkpoint, f"SAM {sam.model_type}")


def _check_compiler(profile: ProfileConfig, report: Preflight) -> None:
    from clipsam_lib.devices import resolve_device
    from clipsam_lib.modeling.compiled import CompileUnavailable, check_compiler

    for key, on in (("clip.compile", profile.clip.compile), ("sam.compile", profile.sam.compile)):
        try:
            if on:
                check_compiler(resolve_device(profile.device), key)
        except CompileUnavailable as err:
            report.problems.append(str(err))


def _check_file(report: Preflight, kind: str, name: str, what: str) -> None:
    from clipsam_lib.weights import (
        KNOWN_CHECKPOINTS,
        file_sha256,
        mini_recipe_hash,
        resolve_checkpoint,
    )

    try:
        path = resolve_checkpoint(kind, name)  # known files: hash-checked here
    except (UserError, FileNotFoundError, ValueError) as err:
        report.problems.append(str(err.args[0] if err.args else err))
        return
    if path.name not in KNOWN_CHECKPOINTS and not _looks_like_torch_file(path):
        report.problems.append(
            f"{path} ({kind}) is not a PyTorch checkpoint (neither a zip archive, a pickle "
            "nor a safetensors file): it is corrupt or another kind of file; download it "
            "again.")
        return
    recipe = mini_recipe_hash(path)
    label = f", mini-pretrained recipe {recipe}" if recipe else ""
    report.weights.append(f"{what}: {path} (sha256 {file_sha256(path)[:16]}...{label})")


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (or, before torch 1.6, a pickle starting 0x80);
    a ``.safetensors`` file has a JSON header that safetensors itself must read."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt"):
                return True
        except Exception:  # noqa: BLE001 - any header error: not a usable file
            return False
    if zipfile.is_zipfile(path):
        return True
    with path.open("rb") as handle:
        return handle.read(1) == b"\x80"


def _check_clip_tag(profile: ProfileConfig, report: Preflight) -> None:
    import open_clip

    from clipsam_lib.modeling.clip_backbone import _tag_failure_message, pretrained_tag_config

    clip = profile.clip
    tag_cfg = pretrained_tag_config(clip)
    try:
        path = open_clip.pretrained.download_pretrained(tag_cfg)
    except Exception as err:  # noqa: BLE001 - any hub failure is the same user fix
        report.problems.append(_tag_failure_message(clip, tag_cfg, err))
        return
    report.weights.append(f"CLIP {clip.model_name}: open_clip tag {clip.pretrained!r} ({path})")


# -- datasets --------------------------------------------------------------------------------


def _check_datasets(profile: ProfileConfig, report: Preflight,
                    deep: bool) -> tuple[dict[str, int], dict[str, int]]:
    """Index (or deep-check) every dataset; returns test images and their pixels (from the
    files' headers) per dataset."""
    from clipsam_lib.data import DatasetError, load_or_build_index, records

    images: dict[str, int] = {}
    pixels: dict[str, int] = {}
    for spec in profile.datasets:
        root = paths.dataset_root(profile, spec.name)
        report.cleaned += remove_stale_staging(root)
        if spec.synthetic and not root.is_dir():
            report.datasets.append(f"{spec.name}: {root} (synthetic, built by notebook 00)")
            continue
        try:
            index = load_or_build_index(root, spec.layout, spec.split,
                                        mask_threshold=profile.eval.mask_threshold,
                                        fallback_dir=paths.index_fallback_dir(profile),
                                        folder=spec.folder_options())
            recs = records(index, "test", spec.classes)
            if deep:
                _decode_all(root, recs, profile)
        except (DatasetError, UserError) as err:
            report.problems.append(str(err.args[0] if err.args else err))
            continue
        images[spec.name] = len(recs)
        pixels[spec.name] = sum(_pixels(root / rec["img_path"]) for rec in recs)
        classes = len({r["cls_name"] for r in recs})
        report.datasets.append(f"{spec.name}: {root} ({len(recs)} test images, {classes} "
                               f"classes{', every file decoded' if deep else ''})")
    return images, pixels


def _pixels(path: Path) -> int:
    """Height x width from the file's header (nothing decoded); 0 if it cannot be read,
    which the deep check and the run itself report."""
    try:
        with Image.open(path) as image:
            return image.width * image.height
    except (OSError, ValueError):
        return 0


def _decode_all(root: Path, recs: list[dict[str, Any]], profile: ProfileConfig) -> None:
    """Decode every image and mask fully (``--deep``): DatasetError names the first bad one."""
    from clipsam_lib.data.io import check_mask_matches, read_image_rgb, read_mask

    for rec in recs:
        image = read_image_rgb(root / rec["img_path"])
        if rec.get("mask_path"):
            mask = read_mask(root / rec["mask_path"], profile.eval.mask_threshold, "raw")
            check_mask_matches(image.shape, mask, root / rec["mask_path"])


# -- folders and free space -------------------------------------------------------------------


# Map variants per evaluated image. Measured on the smoke profile: notebooks 02-04 wrote
# 25 and 24 on the two test sets, 2 on each generalization set; 30 leaves room.
MAPS_PER_IMAGE = 30
# A stored map is its S x S rough map plus the pixels MMR changed (pipeline.MAP_FORMAT).
# MMR changed 1.0 % of the smoke reproduction's map pixels (bench/map_store.py,
# 2026-12-05); counted as a tenth, so that a SAM with larger masks still fits.
CHANGED_SHARE = 0.1


# UMCI runs per direction and seed, counted in a smoke reproduction (2026-12-04): 13 for
# the notebooks' UMCI and baseline variants (ablations, hidden sizes, kernels, peer
# conventions) and 2 for each spread draw (its UMCI and its baseline); 27 in all.
UMCI_RUNS_PER_DIRECTION = 13
UMCI_RUNS_PER_DRAW = 2


def estimated_bytes(profile: ProfileConfig, images: dict[str, int],
                    pixels: dict[str, int]) -> dict[str, int]:
    """Bytes the run writes, from the shapes: CLIP tokens (+ global embedding) per image,
    SAM embeddings per evaluated image, maps of about 30 variants per evaluated image
    (each its S x S rough map and the changed share of the original size's ``pixels``, in
    ``pipeline.MAP_DTYPE``), and the UMCI runs' kept checkpoints
    (``umci_checkpoint_bytes``)."""
    from clipsam_lib.modeling.clip_backbone import clip_dims, clip_patch_size
    from clipsam_lib.modeling.sam_backbone import sam_embedding_shape
    from clipsam_lib.pipeline import MAP_DTYPE

    width, embed_dim = clip_dims(profile.clip)
    grid = profile.clip.image_size // clip_patch_size(profile.clip)
    element = 4 if profile.cache_dtype == "fp32" else 2
    clip_bytes = (len(profile.clip.stages) * grid * grid * width + embed_dim) * element
    channels, rows, cols = sam_embedding_shape(profile.sam.model_type)
    sam_bytes = channels * rows * cols * element
    total = sum(images.values())
    tested = {name for d in profile.directions for name in d.test + d.generalization}
    evaluated = sum(n for name, n in images.items() if name in tested)
    evaluated_pixels = sum(n for name, n in pixels.items() if name in tested)
    return {"cache": total * clip_bytes + evaluated * sam_bytes,
            "results": int(MAPS_PER_IMAGE * MAP_DTYPE().itemsize * (
                evaluated * profile.clip.image_size**2 + CHANGED_SHARE * evaluated_pixels))
            + umci_checkpoint_bytes(profile)}


def umci_checkpoint_bytes(profile: ProfileConfig) -> int:
    """What the UMCI runs keep: ``final.pt`` and ``train.eval_epochs``' epochs (float32
    weights) of every run; a finished run drops its optimizer state (``train``)."""
    import torch

    from clipsam_lib.modeling.clip_backbone import clip_dims
    from clipsam_lib.modeling.umci import build_umci

    width, embed_dim = clip_dims(profile.clip)
    with torch.device("meta"):  # shapes only: a paper-size UMCI is 57 M parameters
        umci = build_umci(profile.umci, width, embed_dim, len(profile.clip.stages))
    weights = 4 * sum(p.numel() for p in umci.state_dict().values())
    runs = len(profile.directions) * len(profile.train.seeds or [profile.train.seed]) * (
        UMCI_RUNS_PER_DIRECTION + UMCI_RUNS_PER_DRAW * len(profile.spread_draws))
    return runs * weights * (1 + len(profile.train.eval_epochs or []))


def _check_folders(profile: ProfileConfig, report: Preflight, images: dict[str, int],
                   pixels: dict[str, int]) -> None:
    needs = estimated_bytes(profile, images, pixels)
    for label, folder in (("cache", paths.cache_dir(profile)),
                          ("results", paths.results_dir(profile))):
        problem = writable_problem(folder, f"the {label} folder")
        if problem:
            report.problems.append(problem)
            continue
        free = shutil.disk_usage(_existing_parent(folder)).free
        report.disk.append(f"{label} {folder}: needs about {needs[label] / GIB:.1f} GiB, "
                           f"{free / GIB:.1f} GiB free")
        if free < needs[label]:
            report.problems.append(
                f"{folder} has {free / GIB:.1f} GiB free but the run writes about "
                f"{needs[label] / GIB:.1f} GiB there; free space{_stale_hint(profile, folder)} "
                f"or point the profile's {label}_dir elsewhere.")


def _stale_hint(profile: ProfileConfig, folder: Path) -> str:
    """Where a full disk holds folders no complete run uses any more (``cleanup``)."""
    from clipsam_lib.cleanup import stale_folders

    try:
        stale, _ = stale_folders(profile)
    except UserError:
        return ""
    size = sum(s.size_bytes for s in stale if s.path.is_relative_to(folder))
    if not size:
        return ""
    return (f" (`clipsam clean --profile {profile.name} --delete` frees {size / GIB:.1f} GiB "
            "of folders the latest complete run did not use)")


def _existing_parent(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def writable_problem(folder: Path, what: str) -> str | None:
    """None when files can be created in ``folder`` (made if missing), else one sentence."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".clipsam-write-test-"):
            pass
    except OSError as err:
        return (f"{folder} ({what}) is not writable ({err.strerror or type(err).__name__}); "
                "fix its permissions or choose another folder.")
    return None
