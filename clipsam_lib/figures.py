"""ClipSAM figures: the qualitative figure (method.md section 4) and MMR step by step.

Both take :class:`FigureSample` rows (an image, its ground truth and ClipSAM's output for
it, e.g. a ``ClipSAMPrediction``) and write ``results/<profile>/figures/<name>.png``
atomically. Heat maps are jet overlays at alpha 0.5, ground truth is drawn as contours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from clipsam_lib import paths
from clipsam_lib.config import ProfileConfig
from clipsam_lib.io_utils import atomic_path
from clipsam_lib.provenance import is_random_init

LEVEL_COLORS = ("#e41a1c", "#ff7f00", "#377eb8")  # level 1 (best score), 2, 3
OVERLAY_ALPHA = 0.5


@dataclass
class FigureSample:
    """One row of a figure.

    result: anything with ``clip_map, binary, prompts, masks, scores, final_map`` at the
    original size (``ClipSAMPrediction`` or ``mmr.MMRResult``).
    """

    image: np.ndarray  # RGB uint8 H x W x 3
    gt: np.ndarray | None  # bool H x W (None or all False for a normal image)
    result: Any
    title: str = ""


# -- drawing helpers ---------------------------------------------------------------------


def _heat(ax: plt.Axes, image: np.ndarray, heat: np.ndarray, per_image: bool = False) -> None:
    """Jet overlay on [0, 1], or on the map's own [min, max] when ``per_image``."""
    low, high = (float(heat.min()), float(heat.max())) if per_image else (0.0, 1.0)
    ax.imshow(image)
    ax.imshow(heat, cmap="jet", alpha=OVERLAY_ALPHA, vmin=low, vmax=max(high, low + 1e-12))


def _gt_contours(ax: plt.Axes, gt: np.ndarray | None, color: str = "lime") -> None:
    if gt is not None and gt.any():
        ax.contour(gt.astype(float), levels=[0.5], colors=color, linewidths=1.2)


def _prompts(ax: plt.Axes, prompts: Any) -> None:
    """Boxes, and the points where they reach SAM (not in box-only mode)."""
    for (x0, y0, x1, y1), (x, y) in zip(prompts.boxes, prompts.points):
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1,
                               fill=False, edgecolor="#00e5ff", linewidth=1.2))
        if prompts.mode != "box":
            ax.plot([x], [y], marker="*", color="yellow", markersize=9,
                    markeredgecolor="black", markeredgewidth=0.6)


def _level_overlay(shape: tuple[int, int], masks: np.ndarray, level: int | None) -> np.ndarray:
    """RGBA image of the masks of one level (or all levels, best on top)."""
    rgba = np.zeros((*shape, 4), np.float32)
    levels = range(masks.shape[1] - 1, -1, -1) if level is None else [level]
    for lv in levels:
        union = masks[:, lv].any(axis=0) if len(masks) else np.zeros(shape, bool)
        rgba[union] = (*matplotlib.colors.to_rgb(LEVEL_COLORS[lv]), 0.6)
    return rgba


def _row_height(samples: Sequence[FigureSample], column_width: float) -> float:
    """Inches per row so that panels of the samples' mean aspect ratio fill the width."""
    aspect = float(np.mean([s.image.shape[0] / s.image.shape[1] for s in samples]))
    return column_width * aspect + 0.35


def _off(ax: plt.Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig: plt.Figure, profile: ProfileConfig, name: str) -> Path:
    out = paths.results_subdir(profile, "figures") / f"{name}.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120, format="png", bbox_inches="tight")
    plt.close(fig)
    return out


# -- figures -----------------------------------------------------------------------------

QUALITATIVE_COLUMNS = ("image", "ground truth", "CLIP rough map", "binary map + prompts",
                       "SAM masks by level", "final map")


def qualitative_figure(
    profile: ProfileConfig,
    samples: Sequence[FigureSample],
    name: str = "qualitative",
    per_image_scale: bool | None = None,
) -> Path:
    """Rows of samples; columns image | GT | rough map | binary + prompts | masks | final.

    Heat maps span [0, 1]; with ``per_image_scale`` (default: when the backbones are
    random-init, whose maps can sit near 0 everywhere) each spans its own min-max.
    """
    if per_image_scale is None:
        per_image_scale = is_random_init(profile)
    n = len(samples)
    fig, axes = plt.subplots(n, 6, figsize=(13, _row_height(samples, 13 / 6) * n + 0.4),
                             squeeze=False)
    for row, sample in zip(axes, samples):
        res = sample.result
        row[0].imshow(sample.image)
        row[1].imshow(sample.image)
        _gt_contours(row[1], sample.gt)
        _heat(row[2], sample.image, res.clip_map, per_image_scale)
        row[3].imshow(res.binary, cmap="gray", vmin=0, vmax=1)
        _prompts(row[3], res.prompts)
        row[4].imshow(sample.image)
        row[4].imshow(_level_overlay(res.binary.shape, res.masks, None))
        _heat(row[5], sample.image, res.final_map, per_image_scale)
        _gt_contours(row[5], sample.gt, color="white")
        row[0].set_ylabel(sample.title, fontsize=8)
        for ax in row:
            _off(ax)
    for ax, title in zip(axes[0], QUALITATIVE_COLUMNS):
        scaled = per_image_scale and "map" in title and "binary" not in title
        ax.set_title(title + ("\n(min-max per image)" if scaled else ""), fontsize=9)
    legend = [plt.Line2D([], [], color=c, lw=6, label=f"level {i + 1}")
              for i, c in enumerate(LEVEL_COLORS)]
    fig.legend(handles=legend, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return _save(fig, profile, name)


def mmr_steps_figure(
    profile: ProfileConfig, samples: Sequence[FigureSample], name: str = "mmr_steps",
    first_title: str = "binary map, boxes, points",
) -> Path:
    """Per sample: binary map + prompts, then SAM's masks of level 1, 2 and 3 (with scores).

    ``sam_check.box_prompt_samples`` gives rows whose "binary map" is the ground truth
    and whose prompts are its regions' boxes (``first_title`` then says so).
    """
    n = len(samples)
    fig, axes = plt.subplots(n, 4, figsize=(9.5, _row_height(samples, 9.5 / 4) * n + 0.5),
                             squeeze=False)
    for row, sample in zip(axes, samples):
        res = sample.result
        row[0].imshow(res.binary, cmap="gray", vmin=0, vmax=1)
        _prompts(row[0], res.prompts)
        _gt_contours(row[0], sample.gt)
        row[0].set_ylabel(f"{sample.title}\n{len(res.prompts)} region(s)", fontsize=8)
        for level in range(3):
            ax = row[level + 1]
            ax.imshow(sample.image)
            ax.imshow(_level_overlay(res.binary.shape, res.masks, level))
            _gt_contours(ax, sample.gt, color="white")
            if len(res.scores):
                level_scores = res.scores[:, level]
                ax.set_xlabel(f"score mean {level_scores.mean():.2f}, "
                              f"max {level_scores.max():.2f}", fontsize=7)
        for ax in row:
            _off(ax)
    titles = (first_title, "level 1 (best score)", "level 2", "level 3")
    for ax, title in zip(axes[0], titles):
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, profile, name)


def prediction_overlay(image: np.ndarray, result: Any, out: Path, *, title: str = "",
                       per_image: bool = False) -> Path:
    """One image's ClipSAM output in four panels: image | rough map | binary map with
    MMR's boxes and points | final map. Heat maps on a fixed [0, 1] scale, or on each
    map's own min-max when ``per_image`` (then the titles say so)."""
    scale = "own min-max" if per_image else "scale 0-1"
    height, width = image.shape[:2]
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.2 * height / width + 0.6))
    axes[0].imshow(image)
    axes[0].set_title(title or "image", fontsize=9)
    _heat(axes[1], image, result.clip_map, per_image)
    axes[1].set_title(f"rough map (UMCI, {scale})", fontsize=9)
    axes[2].imshow(result.binary, cmap="gray", vmin=0, vmax=1)
    _prompts(axes[2], result.prompts)
    axes[2].set_title(f"binary map, {len(result.prompts)} prompt(s)", fontsize=9)
    _heat(axes[3], image, result.final_map, per_image)
    axes[3].set_title(f"final map (ClipSAM, {scale})", fontsize=9)
    for ax in axes:
        _off(ax)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out
