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
        print(f"total {total:.1f} min (target <= 30 min on 2 CPU cores)")


if __name__ == "__main__":
    main()
