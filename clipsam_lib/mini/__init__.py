"""The mini backbones: a CLIP and a SAM pretrained by the project on synthetic data.

They make the embedded default show what the method does (rough maps that find defects,
SAM masks that follow them) at laptop cost. They are the project's own weights, trained
on its own synthetic corpus (``mini.corpus``: no benchmark picture, class name or mask),
and their numbers say nothing about the paper's.

``pretrain_mini`` (the ``clipsam pretrain-mini`` command) reproduces the committed files
in ``clipsam_lib/mini_weights/`` from the recipes in ``mini.recipes``.
"""

from __future__ import annotations

from pathlib import Path

from clipsam_lib.mini.recipes import FILES, RECIPES, WEIGHTS_FOLDER, recipe_hash

__all__ = ["FILES", "RECIPES", "WEIGHTS_FOLDER", "pretrain_mini", "recipe_hash"]


def pretrain_mini(which: tuple[str, ...] = ("clip", "sam"), out_folder: Path = WEIGHTS_FOLDER,
                  work_folder: Path | None = None, *, resume: bool = True,
                  progress: bool = True, recipes: dict | None = None) -> dict[str, Path]:
    """Train the named mini backbones with their recipes (``recipes``, default the
    committed ``RECIPES``; bench/pretrain_mini.py passes others); returns the files written.

    The training state is kept in ``work_folder`` (default ``<out_folder>/.pretrain``)
    every few steps, so an interrupted run continues where it stopped.
    """
    from clipsam_lib.mini.clip_pretrain import pretrain_clip
    from clipsam_lib.mini.sam_pretrain import pretrain_sam

    recipes = recipes or RECIPES
    unknown = set(which) - set(recipes)
    if unknown:
        raise ValueError(f"pretrain-mini knows {sorted(RECIPES)}, not {sorted(unknown)}.")
    work_folder = work_folder or Path(out_folder) / ".pretrain"
    trainers = {"clip": pretrain_clip, "sam": pretrain_sam}
    written = {}
    for name in which:
        path = Path(out_folder) / FILES[name]
        trainers[name](recipes[name], path, work_folder, resume=resume, progress=progress)
        written[name] = path
    return written
