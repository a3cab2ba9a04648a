"""Benchmark: the mini backbones' pretraining, timed, and compared with the committed files.

Runs ``clipsam pretrain-mini`` (both recipes, from scratch) into a temporary folder and
prints the minutes each recipe took (target: <= 30 min for both on 2 CPU cores) and
whether the weights it wrote are byte-identical to the committed ones in
``clipsam_lib/mini_weights/`` (the recipes are deterministic for a thread count on one
kind of CPU; another CPU may round differently, which the recipe hash cannot see).

    .venv/bin/python bench/pretrain_mini.py [--only clip|sam]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from clipsam_lib.mini import FILES, RECIPES, WEIGHTS_FOLDER, pretrain_mini, recipe_hash
from clipsam_lib.weights import file_sha256


def largest_difference(committed: Path, written: Path) -> tuple[str, float]:
    """The tensor whose relative L2 difference between the two files is largest."""
    from safetensors.torch import load_file

    a, b = load_file(str(committed)), load_file(str(written))
    worst = ("", 0.0)
    for name in sorted(set(a) & set(b)):
        x, y = a[name].double(), b[name].double()
        diff = float((x - y).norm() / y.norm().clamp(min=1e-12))
        worst = max(worst, (name, diff), key=lambda item: item[1])
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="clip or sam (default: both)")
    args = parser.parse_args()
    which = (args.only,) if args.only else tuple(RECIPES)
    with tempfile.TemporaryDirectory() as folder:
        total = 0.0
        for name in which:
            start = time.perf_counter()
            written = pretrain_mini((name,), Path(folder), resume=False, progress=False)[name]
            minutes = (time.perf_counter() - start) / 60
            total += minutes
            committed = WEIGHTS_FOLDER / FILES[name]
            same = committed.is_file() and file_sha256(committed) == file_sha256(written)
            print(f"mini {name}: recipe {recipe_hash(RECIPES[name])}, {minutes:.1f} min, "
                  f"bytes identical to the committed file: {same}")
            if committed.is_file() and not same:
                tensor, diff = largest_difference(committed, written)
                print(f"  largest relative difference: {diff:.2e} ({tensor})")
        print(f"total {total:.1f} min (target <= 30 min on 2 CPU cores)")


if __name__ == "__main__":
    main()
