"""ClipSAM on your own images: ``clipsam predict`` and notebook 05.

Any size, RGB / grayscale / RGBA / palette, PNG / JPEG / TIFF / BMP. Per image, in the
output folder, named after the image's stem (``<stem>`` made unique when two inputs
share one):

- ``<stem>.tiff``: the final map, float32, at the original size (the official MVTec AD
  script reads these), and ``<stem>.npy``, the same array;
- ``<stem>_overlay.png``: image | rough map | binary map with boxes and points | final map;
- ``<stem>.json``: the prompts, SAM's scores per prompt and the image-level scores.

The method is zero-shot: any class name works (its text features are computed on first
use and cached). Without ``umci`` the profile's trained UMCI in ``results/<profile>/`` is
used, and the result says which.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from tqdm.auto import tqdm

from clipsam_lib.cleanup import mark_used
from clipsam_lib.config import ProfileConfig
from clipsam_lib.data.io import DatasetError, read_image_rgb
from clipsam_lib.errors import DiskError, UserError
from clipsam_lib.io_utils import atomic_path, write_json_atomic
from clipsam_lib.provenance import weights_identity
from clipsam_lib.workspace import Workspace, as_workspace

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


@dataclass
class PredictionFiles:
    """What was written for one image."""

    image: Path
    map_tiff: Path
    map_npy: Path
    overlay: Path
    summary: Path
    image_score: float


@dataclass
class PredictionRun:
    """A predict call: the UMCI it used, the files per image, the images it skipped."""

    umci: Path
    umci_source: str
    written: list[PredictionFiles] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "<file>: <reason>"


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """The image files among ``inputs`` (files, or folders searched recursively), sorted."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.is_file()
                            and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
            if not images:
                raise UserError(f"{path} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                                "point at a folder of images or at image files.")
            found += images
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"{path} does not exist; give image files or folders of images.")
    return found


def benchmark_examples(workspace: Workspace | ProfileConfig, n: int = 4) -> tuple[list[Path], str]:
    """``n`` anomalous test images of one class of the profile's first test set, and that
    class (notebook 05's default input when the reader gives no folder)."""
    ws = as_workspace(workspace)
    test = ws.profile.directions[0].test[0]
    handle = ws.dataset(test)
    anomalous = [r for r in ws.eval_records(test) if r["anomaly"]]
    if not anomalous:
        raise UserError(f"{test} has no anomalous test image to show; pass images=[...].")
    cls = anomalous[0]["cls_name"]
    picked = [handle.root / r["img_path"] for r in anomalous if r["cls_name"] == cls][:n]
    return picked, cls


def default_umci(workspace: Workspace | ProfileConfig) -> tuple[Path, str]:
    """The profile's trained UMCI: the run trained on an MVTec-layout set if the profile
    has one (the model the paper uses for every other set), else the first direction's."""
    from clipsam_lib.train import run_dir

    ws = as_workspace(workspace)
    directions = ws.profile.directions
    if not directions:
        raise UserError(f"Profile {ws.profile.name} has no training direction; pass --umci "
                        "CHECKPOINT.")
    mvtec = [d for d in directions if ws.profile.dataset(d.train).layout == "mvtec"]
    direction = (mvtec or directions)[0]
    checkpoint = run_dir(ws, direction.train) / "final.pt"
    if not checkpoint.is_file():
        raise UserError(
            f"No trained UMCI for profile {ws.profile.name} at {checkpoint}: train it with "
            f"`clipsam run --profile {ws.profile.name} --only 01` (or pass --umci CHECKPOINT).")
    mark_used(checkpoint.parent)
    return checkpoint, f"trained on {direction.train} (profile {ws.profile.name})"


def predict_images(
    workspace: Workspace | ProfileConfig,
    images: Iterable[str | Path],
    class_name: str,
    out_dir: str | Path,
    *,
    umci: str | Path | None = None,
    skip_bad: bool = False,
    per_image_scale: bool = False,
    progress: bool = True,
) -> PredictionRun:
    """Run ClipSAM on every image and write its map, overlay and summary (module doc).

    Every problem that can be found before the work is found first: an empty class name,
    an unwritable output folder, a missing UMCI, and unreadable images (named; skipped
    only with ``skip_bad``, never silently).
    """
    from clipsam_lib.figures import prediction_overlay
    from clipsam_lib.pipeline import ClipSAMPredictor
    from clipsam_lib.preflight import writable_problem

    ws = as_workspace(workspace)
    if not class_name or not class_name.strip():
        raise UserError("The class name is empty; name what the images show (--class bottle).")
    out = Path(out_dir).expanduser()
    problem = writable_problem(out, "the output folder")
    if problem:
        raise DiskError(problem)
    checkpoint, source = (Path(umci), f"from {umci}") if umci else default_umci(ws)
    if not checkpoint.is_file():
        raise UserError(f"UMCI checkpoint {checkpoint} does not exist; pass a final.pt that "
                        "`clipsam run` trained.")
    files = collect_images(images)
    run = PredictionRun(checkpoint, source)
    readable = _readable(files, skip_bad, run.skipped)
    predictor = ClipSAMPredictor(ws, checkpoint)
    stems = _unique_stems(readable)
    for path in tqdm(readable, desc="ClipSAM", unit="img", disable=not progress):
        try:
            image = read_image_rgb(path)
        except DatasetError as err:  # passed the header check, fails to decode fully
            if not skip_bad:
                raise
            run.skipped.append(f"{path}: {err.args[0]}")
            continue
        result = predictor.predict(image, class_name)
        stem = out / stems[path]
        run.written.append(_write_outputs(path, stem, result, class_name, run,
                                          ws.profile, per_image_scale, prediction_overlay))
    return run


def _readable(files: list[Path], skip_bad: bool, skipped: list[str]) -> list[Path]:
    """Files whose header opens as an image; the others stop the run (or are skipped)."""
    from clipsam_lib.data.io import image_size

    readable = []
    for path in files:
        try:
            image_size(path)
        except DatasetError as err:
            if not skip_bad:
                raise DatasetError(f"{err.args[0].rstrip('.')} (pass --skip-bad to skip "
                                   "unreadable images and list them).") from None
            skipped.append(f"{path}: {err.args[0]}")
            continue
        readable.append(path)
    return readable


def _unique_stems(files: list[Path]) -> dict[Path, str]:
    """Output names from the inputs' stems; a repeated stem gets its parent folders."""
    counts: dict[str, int] = {}
    for path in files:
        counts[path.stem] = counts.get(path.stem, 0) + 1
    return {path: path.stem if counts[path.stem] == 1
            else "_".join([*path.parent.parts[-2:], path.stem]) for path in files}


def _write_outputs(path: Path, stem: Path, result: Any, class_name: str, run: PredictionRun,
                   profile: ProfileConfig, per_image_scale: bool, overlay_fn) -> PredictionFiles:
    final = result.final_map.astype(np.float32)
    tiff, npy = stem.with_suffix(".tiff"), stem.with_suffix(".npy")
    with atomic_path(tiff) as tmp:
        tifffile.imwrite(tmp, final)
    with atomic_path(npy) as tmp, open(tmp, "wb") as handle:
        np.save(handle, final)
    overlay = overlay_fn(read_image_rgb(path), result, stem.parent / f"{stem.name}_overlay.png",
                         title=f"{path.name} ({class_name})", per_image=per_image_scale)
    scores = {"clip_global": result.clip_score, "map_max": float(final.max())}
    # One image has no class set to normalise over: the combination falls back to CLIP's.
    used = profile.eval.image_score if profile.eval.image_score in scores else "clip_global"
    summary = write_json_atomic(stem.with_suffix(".json"), {
        "image": str(path), "class_name": class_name,
        "size": [int(final.shape[0]), int(final.shape[1])],
        "umci": str(run.umci), "umci_source": run.umci_source,
        "weights": weights_identity(profile),
        "image_score": scores[used], "image_score_kind": used, "image_scores": scores,
        "prompts": {"boxes": result.prompts.boxes.tolist(),
                    "points": result.prompts.points.tolist(), "mode": profile.mmr.prompt_mode},
        "sam_scores": np.round(result.scores, 5).tolist(),
        "heat_map_scale": "per-image min-max" if per_image_scale else "fixed [0, 1]",
    })
    return PredictionFiles(path, tiff, npy, overlay, summary, scores[used])


__all__ = ["PredictionFiles", "PredictionRun", "benchmark_examples", "collect_images",
           "default_umci",
           "predict_images"]
