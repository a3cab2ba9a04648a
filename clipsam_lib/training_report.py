"""Notebook 01's report: untrained vs trained rough maps, and the training loss curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipsam_lib import paths
from clipsam_lib.config import ProfileConfig
from clipsam_lib.evaluate import evaluate_maps, macro_mean
from clipsam_lib.features import clip_score_lookup, extract_clip_features
from clipsam_lib.io_utils import atomic_path
from clipsam_lib.modeling.umci import UMCI
from clipsam_lib.pipeline import rough_maps
from clipsam_lib.provenance import provenance_columns
from clipsam_lib.train import TrainResult, init_umci, load_umci
from clipsam_lib.workspace import Workspace, as_workspace


def rough_map_metrics(
    workspace: Workspace | ProfileConfig,
    umci: UMCI,
    dataset_name: str,
    records: list[dict[str, Any]] | None = None,
    extra_columns: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Per-class metrics of UMCI's rough maps through ``clipsam_lib.evaluate.evaluate_maps``.

    ``records`` default to the dataset's evaluation records; their CLIP features are
    extracted first if missing. Metrics are fractions, one row per class.
    """
    ws = as_workspace(workspace)
    profile = ws.profile
    records = records if records is not None else ws.eval_records(dataset_name)
    extract_clip_features(profile, dataset_name, records, backbone=ws.clip, progress=False)
    maps = rough_maps(profile, umci, dataset_name, records)
    return evaluate_maps(
        records,
        ws.dataset(dataset_name).root,
        lambda rec: maps[rec["img_path"]],
        profile.eval,
        profile.clip.image_size,
        dataset_name,
        clip_scores=clip_score_lookup(profile, dataset_name, records),
        extra_columns=extra_columns,
    )


def rough_map_comparison(
    workspace: Workspace | ProfileConfig, results: dict[str, TrainResult]
) -> pd.DataFrame:
    """Rough-map metrics, untrained vs trained UMCI, per direction, class and macro mean.

    ``results`` maps each direction's training dataset to its ``TrainResult``; the
    untrained model is ``init_umci`` (where training starts). Every row carries the
    provenance columns. Metrics are fractions.
    """
    ws = as_workspace(workspace)
    profile = ws.profile
    frames = []
    for direction in profile.directions:
        result = results[direction.train]
        models = {"untrained": init_umci(profile), "trained": load_umci(result.checkpoint)}
        for test_set in direction.test:
            index_key = ws.dataset(test_set).index_hash
            for label, umci in models.items():
                extra = {
                    "train": direction.train,
                    "model": label,
                    "epochs": result.epochs if label == "trained" else 0,
                    "umci_run": result.run_dir.name,
                    **provenance_columns(profile, dataset_index_hash=index_key),
                }
                per_class = rough_map_metrics(ws, umci, test_set, extra_columns=extra)
                frames.append(pd.concat([per_class, macro_mean(per_class)], ignore_index=True))
    return pd.concat(frames, ignore_index=True)


def plot_loss_curves(
    profile: ProfileConfig, runs: dict[str, pd.DataFrame], name: str = "umci_loss_curves"
) -> Path:
    """Seaborn line plot of per-step training loss, one line per run -> figures/<name>.png."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import seaborn as sns

    frames = []
    for label, losses in runs.items():
        frame = losses.copy()
        frame["run"] = label
        frame["iteration"] = np.arange(len(frame))
        frames.append(frame)
    data = pd.concat(frames, ignore_index=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sns.lineplot(data=data, x="iteration", y="loss", hue="run", ax=ax)
    ax.set(
        xlabel="training step",
        ylabel="focal + dice, summed over stages",
        title="UMCI training loss",
    )
    fig.tight_layout()
    out = paths.results_subdir(profile, "figures") / f"{name}.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=150, format="png")
    plt.close(fig)
    return out
