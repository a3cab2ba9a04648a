"""Benchmark: the mini backbones' pretraining, timed, and compared with the committed files.

Runs ``clipsam pretrain-mini`` (both recipes, from scratch) into a temporary folder and
prints the minutes each recipe took (target: <= 30 min for both on 2 CPU cores) and
whether the weights it wrote equal the committed ones (tensors and metadata) in
``clipsam_lib/mini_weights/`` (the recipes are deterministic for a thread count on one
kind of CPU; another CPU may round differently, which the recipe hash cannot see).

Where they differ it prints the median and the largest relative difference over the
tensors (the largest alone can be one small bias: on 2026-12-04 the SAM's was 0.91 with a
median of 0.12); ``--keep DIR`` keeps the weights it wrote, so they can be evaluated
(``sam.checkpoint: DIR/clipsam-mini-sam.safetensors`` in a profile) instead of trained again.
``--recipe KEY=VALUE`` trains another recipe (a field of ``ClipRecipe`` / ``SamRecipe``,
with ``--only``), to be judged with ``bench/draw_spread.py --set clip.pretrained=DIR/...``.
Another SAM architecture is tried by editing ``mini.recipes.SAM_ARCHITECTURE`` for the
run (it is part of the recipe hash); the comparison then names the tensors whose shapes
differ and compares the rest.

    .venv/bin/python bench/pretrain_mini.py [--only clip|sam] [--keep DIR]
                                            [--recipe KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml
from safetensors import safe_open

from clipsam_lib.mini import FILES, RECIPES, WEIGHTS_FOLDER, pretrain_mini, recipe_hash


def file_contents(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file, read through one handle."""
    with safe_open(str(path), "pt") as file:
        # safe_open is not iterable: its keys() is the way in.
        return file.metadata(), {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118


def same_contents(committed: tuple[dict, dict], written: tuple[dict, dict]) -> bool:
    """Every tensor and metadata entry equal (``file_contents`` of both files). Not the
    bytes: safetensors writes the header's metadata in no fixed order, so two equal files
    can differ there."""
    (meta_a, a), (meta_b, b) = committed, written
    return meta_a == meta_b and a.keys() == b.keys() and all(
        a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]) for key in a)


def relative_differences(a: dict[str, torch.Tensor],
                         b: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per floating-point tensor of the same name and shape in both files' tensors, the
    relative L2 difference between them."""
    return {name: float((a[name].double() - b[name].double()).norm()
                        / b[name].double().norm().clamp(min=1e-12))
            for name in sorted(set(a) & set(b))
            if a[name].is_floating_point() and a[name].shape == b[name].shape}


def reshaped_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> int:
    """How many tensors the two share by name but not by shape (another architecture:
    ``SAM_ARCHITECTURE`` changed since the committed file)."""
    return sum(a[name].shape != b[name].shape for name in set(a) & set(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="clip or sam (default: both)")
    parser.add_argument("--keep", default=None, help="write the weights here and keep them")
    parser.add_argument("--recipe", action="append", default=[], metavar="KEY=VALUE",
                        help="another value of a recipe field (with --only); repeatable")
    args = parser.parse_args()
    which = (args.only,) if args.only else tuple(RECIPES)
    if args.recipe and not args.only:
        parser.error("--recipe changes one recipe: name it with --only clip or --only sam")
    recipes = dict(RECIPES)
    for item in args.recipe:
        key, sep, value = item.partition("=")
        if not sep or key not in {f.name for f in dataclasses.fields(recipes[args.only])}:
            parser.error(f"--recipe {item!r}: write FIELD=VALUE with a field of the "
                         f"{args.only} recipe (mini/recipes.py)")
        recipes[args.only] = dataclasses.replace(recipes[args.only], **{key: yaml.safe_load(value)})
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.keep or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        total = 0.0
        for name in which:
            start = time.perf_counter()
            written = pretrain_mini((name,), folder, resume=False, progress=False,
                                    recipes=recipes)[name]
            minutes = (time.perf_counter() - start) / 60
            total += minutes
            committed = WEIGHTS_FOLDER / FILES[name]
            if not committed.is_file():
                print(f"mini {name}: recipe {recipe_hash(recipes[name])}, {minutes:.1f} min, "
                      "no committed file to compare with")
                continue
            contents = file_contents(committed), file_contents(written)
            same = same_contents(*contents)
            print(f"mini {name}: recipe {recipe_hash(recipes[name])}, {minutes:.1f} min, "
                  f"tensors and metadata equal to the committed file's: {same}")
            if not same:
                tensors = contents[0][1], contents[1][1]
                reshaped = reshaped_tensors(*tensors)
                if reshaped:
                    print(f"  {reshaped} tensors differ in shape: another architecture")
                diffs = relative_differences(*tensors)
                tensor = max(diffs, key=diffs.get, default=None)
                if tensor is not None:
                    print(f"  relative difference over {len(diffs)} tensors of the same shape: "
                          f"median {statistics.median(diffs.values()):.2e}, largest "
                          f"{diffs[tensor]:.2e} ({tensor})")
        print(f"total {total:.1f} min (target <= 30 min on 2 CPU cores)")


if __name__ == "__main__":
    main()
