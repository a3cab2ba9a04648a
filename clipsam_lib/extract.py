"""Stage "extract": the only place a backbone touches a dataset.

CLIP and SAM are frozen, so their outputs for every image the profile's notebooks use
(training sets and evaluation sets) are computed once, by the workspace's backbones, into
the feature caches (``clipsam_lib.features``); every later stage reads the caches.
"""

from __future__ import annotations

from typing import Any

from clipsam_lib.config import ProfileConfig
from clipsam_lib.features import ExtractionReport, extract_clip_features, extract_sam_embeddings
from clipsam_lib.workspace import Workspace, as_workspace

Record = dict[str, Any]


def profile_records(workspace: Workspace | ProfileConfig) -> dict[str, list[Record]]:
    """Every record the profile's notebooks touch, per dataset: training sets (their test
    split, training subset) and evaluation sets (eval subset), without duplicates."""
    ws = as_workspace(workspace)
    train_sets = {d.train for d in ws.profile.directions}
    wanted: dict[str, dict[str, Record]] = {}
    for spec in ws.profile.datasets:
        chosen = wanted.setdefault(spec.name, {})
        if spec.name in train_sets:
            chosen.update((r["img_path"], r) for r in ws.train_records(spec.name))
        chosen.update((r["img_path"], r) for r in ws.eval_records(spec.name))
    return {name: list(recs.values()) for name, recs in wanted.items()}


def extract_profile_features(
    workspace: Workspace | ProfileConfig, *, progress: bool = True, sam: bool = False
) -> list[ExtractionReport]:
    """Fill the CLIP cache (and, with ``sam``, the SAM cache for the evaluation sets) for
    every dataset of the profile; one ExtractionReport (CLIP) per dataset."""
    ws = as_workspace(workspace)
    reports = []
    for name, recs in profile_records(ws).items():
        reports.append(extract_clip_features(ws.profile, name, recs, backbone=ws.clip,
                                             progress=progress))
        if sam and ws.profile.mmr.enabled:
            extract_sam_embeddings(ws.profile, name, ws.eval_records(name), progress=progress,
                                   backbone=ws.sam)
    return reports
