"""Notebook 00's steps: prepare a profile's datasets, count them, show samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from clipsam_lib import paths
from clipsam_lib.config import ProfileConfig
from clipsam_lib.data import Index, Record, load_or_build_index, records
from clipsam_lib.data.io import check_mask_matches, read_image_rgb, read_mask
from clipsam_lib.data.synthetic import build_embedded_benchmark
from clipsam_lib.io_utils import atomic_path
from clipsam_lib.paths import index_fallback_dir


def prepare_datasets(
    profile: ProfileConfig, *, rebuild: bool = False
) -> dict[str, tuple[Path, Index]]:
    """Build the profile's synthetic datasets, index every dataset (meta.json in its root).

    Returns ``{name: (root, index)}``, the index restricted to the profile's classes.
    A real dataset that is missing raises DatasetError naming the ``clipsam download``
    command; ``rebuild`` rebuilds synthetic trees and re-indexes everything.
    """
    build_embedded_benchmark(profile, force=rebuild)
    prepared = {}
    for spec in profile.datasets:
        root = paths.dataset_root(profile, spec.name)
        index = load_or_build_index(root, spec.layout, spec.split, rebuild=rebuild,
                                    mask_threshold=profile.eval.mask_threshold,
                                    fallback_dir=index_fallback_dir(profile),
                                    folder=spec.folder_options())
        prepared[spec.name] = (root, select_classes(index, spec.classes))
    return prepared


def select_classes(index: Index, classes: list[str] | None) -> Index:
    """The index restricted to ``classes`` (None: all); unknown names raise DatasetError."""
    if classes is None:
        return index
    records(index, "test", classes=classes)  # validates the names
    return {split: {c: recs for c, recs in d.items() if c in classes} for split, d in index.items()}


def _span(values: list[int]) -> str:
    """'240' or '224-256' (min-max), for a size column."""
    if not values:
        return ""
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def counts_table(datasets: dict[str, Index]) -> pd.DataFrame:
    """One row per (dataset, class): train/test counts, defect types and image sizes."""
    rows = []
    for name, index in datasets.items():
        classes = sorted(set(index["train"]) | set(index["test"]))
        for cls in classes:
            train = index["train"].get(cls, [])
            test = index["test"].get(cls, [])
            every = train + test
            defects = sorted({r["specie_name"] for r in test if r["anomaly"] and r["specie_name"]})
            rows.append({
                "dataset": name,
                "class": cls,
                "train": len(train),
                "test normal": sum(1 for r in test if not r["anomaly"]),
                "test anomalous": sum(1 for r in test if r["anomaly"]),
                "defect types": ", ".join(defects) or "-",
                "width (px)": _span([r["width"] for r in every]),
                "height (px)": _span([r["height"] for r in every]),
            })
    return pd.DataFrame(rows)


def _examples(index: Index, cls: str, n_anomalous: int) -> list[Record]:
    """The first normal test image and up to ``n_anomalous`` defects of different types."""
    test = records(index, "test", classes=[cls])
    normal = [r for r in test if not r["anomaly"]][:1]
    chosen: list[Record] = []
    for r in (r for r in test if r["anomaly"]):  # one per defect type first, then any
        if r["specie_name"] not in {c["specie_name"] for c in chosen}:
            chosen.append(r)
    chosen += [r for r in test if r["anomaly"] and r not in chosen]
    return normal + chosen[:n_anomalous]


def sample_figure(
    datasets: dict[str, tuple[Path, Index]], path: str | Path, n_anomalous: int = 3
) -> Path:
    """A grid, one row per (dataset, class): a normal image, then defective ones with the
    mask's outline in red. Written atomically to ``path`` (PNG)."""
    grid = [
        (name, cls, root, _examples(index, cls, n_anomalous))
        for name, (root, index) in datasets.items()
        for cls in sorted(index["test"])
    ]
    n_cols = 1 + n_anomalous
    fig = Figure(figsize=(2.2 * n_cols, 1.9 * max(len(grid), 1)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(max(len(grid), 1), n_cols, squeeze=False))
    for row, (name, cls, root, examples) in enumerate(grid):
        for col in range(n_cols):
            ax = axes[row, col]
            ax.set_axis_off()
            if col < len(examples):
                prefix = f"{name}/{cls}" if col == 0 else ""
                _draw(ax, Path(root), examples[col], title_prefix=prefix)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return Path(path)


def _draw(ax, root: Path, record: Record, title_prefix: str) -> None:
    image = read_image_rgb(root / record["img_path"])
    ax.imshow(image)
    label = (record["specie_name"] or "anomalous") if record["anomaly"] else "normal"
    if record["mask_path"]:
        mask = read_mask(root / record["mask_path"], record.get("mask_threshold", 0.0))
        check_mask_matches(image.shape, mask, root / record["mask_path"])
        ax.contour(mask.astype(np.float32), levels=[0.5], colors="red", linewidths=0.9)
    ax.set_title(f"{title_prefix}\n{label}" if title_prefix else label, fontsize=7)
