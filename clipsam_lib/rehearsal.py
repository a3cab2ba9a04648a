"""A measured rehearsal of the notebooks' work: every stage, timed, at the real sizes.

``rehearse(ws)`` runs, on the workspace's profile (normally ``rehearsal``: the paper's
architectures at full size on the embedded benchmark at the paper's image sizes), every
stage the notebooks run, through the same library calls, in the notebooks' order:

1. extraction: CLIP tokens of every record the notebooks use, SAM embeddings of every
   evaluated image (notebook 01, and 02 on first need);
2. fitting: one UMCI per direction (notebook 01), mosaics encoded by the shared CLIP;
3. every ablation table (notebook 02), every sweep (notebook 03), the final tables
   (notebook 04);
4. an evaluation-only re-run (``eval.sigma`` changed), which must reuse every map.

Each stage gets one :class:`StageCost` row: wall seconds, peak resident memory, bytes
added on disk, backbone builds and feature-cache bytes read during the stage, and
``paper_seconds_estimate``: the stage's seconds scaled linearly by the number of images
(times epochs, for fitting) the paper profile would put through it. The linear scaling
is an approximation, said in each row's ``scaling`` column.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

import pandas as pd
import psutil
import torch

from clipsam_lib import paths
from clipsam_lib.features import FeatureCache
from clipsam_lib.io_utils import folder_bytes
from clipsam_lib.modeling import BACKBONE_BUILDS
from clipsam_lib.workspace import Workspace

# Test-split images of the paper profile's datasets, by layout (datasets.md); KSDD2 is
# evaluated twice (official test split 1,004 and the peers' train folder 2,331).
PAPER_TEST_IMAGES = {"mvtec": 1725, "visa": 2162, "mtd": 1344, "ksdd2": 1004 + 2331}
# Epochs of the paper's training, by the training set's layout.
PAPER_EPOCHS = {"visa": 15, "mvtec": 3}


@dataclass
class StageCost:
    """What one stage cost (one row of ``cost.csv``)."""

    stage: str
    images: int  # images through the stage (x epochs for fitting)
    seconds: float
    peak_rss_bytes: int
    peak_gpu_bytes: int  # torch's peak CUDA allocation in the stage (0 off a GPU)
    disk_bytes: int  # added under the cache and results folders
    clip_builds: int
    sam_builds: int
    cache_bytes_read: int
    paper_images: int  # the same count for the paper profile
    paper_seconds_estimate: float
    scaling: str


class _Meter:
    """Measures one stage: time, peak RSS (sampled), peak GPU allocation on the stage's
    device, disk, builds, cache reads."""

    def __init__(self, folders: list[Path], device: torch.device):
        self.folders = folders
        self.gpu = device if device.type == "cuda" else None  # the stage's GPU, if any
        self.process = psutil.Process()

    def __enter__(self) -> Self:
        self.start_disk = sum(folder_bytes(f) for f in self.folders)
        self.start_builds = dict(BACKBONE_BUILDS)
        self.start_read = FeatureCache.bytes_read
        self.peak = self.process.memory_info().rss
        if self.gpu is not None:
            torch.cuda.reset_peak_memory_stats(self.gpu)
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        self.start = time.perf_counter()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
        self._stop.set()
        self._sampler.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
        self.gpu_peak = torch.cuda.max_memory_allocated(self.gpu) if self.gpu is not None else 0
        self.disk = sum(folder_bytes(f) for f in self.folders) - self.start_disk
        self.builds = {k: BACKBONE_BUILDS[k] - self.start_builds.get(k, 0)
                       for k in ("clip", "sam")}
        self.read = FeatureCache.bytes_read - self.start_read


def _paper_images(ws: Workspace, datasets: list[str]) -> int:
    """The paper profile's test images for the layouts of ``datasets`` (each layout once)."""
    layouts = {ws.profile.dataset(name).layout for name in datasets}
    return sum(PAPER_TEST_IMAGES[layout] for layout in layouts)


def rehearse(
    ws: Workspace,
    *,
    parts: tuple[str, ...] = ("extract", "fit", "ablations", "sweeps", "final", "eval_only"),
    progress: bool = False,
    on_stage: Callable[[StageCost], None] | None = None,
) -> pd.DataFrame:
    """Run the chosen parts of every notebook's work on ``ws``; one row per stage."""
    from clipsam_lib import ablations, final_tables, hyperparameters
    from clipsam_lib.extract import extract_profile_features, profile_records
    from clipsam_lib.train import train_umci

    profile = ws.profile
    folders = [paths.cache_dir(profile), paths.results_dir(profile)]
    rows: list[StageCost] = []
    evaluated = _evaluated_datasets(ws)
    n_eval = sum(len(ws.eval_records(name)) for name in evaluated)
    paper_eval = _paper_images(ws, evaluated)

    def stage(name: str, images: int, paper_images: int, scaling: str, work: Callable) -> Any:
        with _Meter(folders, ws.device) as meter:
            result = work()
        per_image = meter.seconds / images if images else 0.0
        row = StageCost(name, images, meter.seconds, meter.peak, meter.gpu_peak,
                        meter.disk,
                        meter.builds["clip"], meter.builds["sam"], meter.read, paper_images,
                        per_image * paper_images, scaling)
        rows.append(row)
        if on_stage is not None:
            on_stage(row)
        return result

    if "extract" in parts:
        records = profile_records(ws)
        n_clip = sum(len(v) for v in records.values())
        reports = stage("extract: CLIP tokens + class texts (train + eval sets)", n_clip,
                        _paper_images(ws, list(records)), "per image (texts: see next row)",
                        lambda: extract_profile_features(ws, progress=progress))
        _split_text_time(rows[-1], reports, ws)
        stage("extract: SAM embeddings (eval sets)", n_eval, paper_eval, "per image",
              lambda: _extract_sam(ws, evaluated, progress))
    if "fit" in parts:
        for direction in profile.directions:
            layout = profile.dataset(direction.train).layout
            epochs = profile.train.epochs[layout]
            n_train = len(ws.train_records(direction.train))
            stage(f"fit: UMCI on {direction.train} ({epochs} epochs)", n_train * epochs,
                  PAPER_TEST_IMAGES[layout] * PAPER_EPOCHS[layout], "per image x epoch",
                  lambda d=direction: train_umci(ws, d.train, progress=progress))
    if "ablations" in parts:
        for name in ablations.TABLES:
            variants = len(ablations.TABLES[name][1])
            stage(f"02 {name} ({variants} variants)", n_eval * variants,
                  paper_eval * variants, "per image x variant",
                  lambda n=name: ablations.ablation_table(ws, n, progress=progress))
    if "sweeps" in parts:
        for name, (_, variants) in hyperparameters.sweeps(profile).items():
            stage(f"03 {name} ({len(variants)} variants)", n_eval * len(variants),
                  paper_eval * len(variants), "per image x variant",
                  lambda n=name: hyperparameters.sweep_table(ws, n, progress=progress))
    if "final" in parts:
        stage("04 final tables (2 methods)", 2 * n_eval, 2 * paper_eval,
              "per image x method", lambda: _final_tables(ws, progress))
    if "eval_only" in parts:
        again = ws.variant({"eval.sigma": 4.0})
        stage("04 re-evaluation, eval.sigma = 4 (maps reused)", 2 * n_eval, 2 * paper_eval,
              "per image x method", lambda: final_tables.run_final(again, progress=progress))
    return pd.DataFrame([asdict(r) for r in rows])


# Classes of the paper profile's datasets (MVTec AD 15, VisA 12, MTD 1, KSDD2 1): the
# prompt ensemble (420 sentences) is encoded once per class, not per image.
PAPER_CLASSES = 15 + 12 + 1 + 1


def _split_text_time(row: StageCost, reports: list[Any], ws: Workspace) -> None:
    """Scale the extraction row's image part per image and its text part per class."""
    text_seconds = sum(r.text_seconds for r in reports)
    classes = sum(r.texts_computed for r in reports)
    image_seconds = row.seconds - text_seconds
    row.paper_seconds_estimate = (image_seconds / row.images * row.paper_images
                                  + (text_seconds / classes * PAPER_CLASSES if classes else 0))
    row.scaling = (f"images per image ({image_seconds:.1f} s), texts per class "
                   f"({text_seconds:.1f} s for {classes})")


def _evaluated_datasets(ws: Workspace) -> list[str]:
    names: list[str] = []
    for direction in ws.profile.directions:
        names += [n for n in direction.test + direction.generalization if n not in names]
    return names


def _extract_sam(ws: Workspace, datasets: list[str], progress: bool) -> None:
    from clipsam_lib.features import extract_sam_embeddings

    for name in datasets:
        extract_sam_embeddings(ws.profile, name, ws.eval_records(name), progress=progress,
                               backbone=ws.sam)


def _final_tables(ws: Workspace, progress: bool) -> None:
    from clipsam_lib import final_tables

    runs = final_tables.run_final(ws, progress=progress)
    summary = final_tables.summary_rows(ws.profile, runs)
    final_tables.write_main_tables(ws.profile, summary)
    final_tables.write_per_category(ws.profile, runs)
    final_tables.write_protocol_comparison(ws.profile, runs)
