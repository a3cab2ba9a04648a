"""How the map store's format (``pipeline.MAP_FORMAT``) compares with float32 maps stored
whole at the original size: bytes, read time, and the share of pixels MMR changed.

Reads every stored map of a results folder (default ``results/smoke/maps``, written by
``make reproduce``), checks that it rebuilds (``read_map`` verifies the checksum), and
times reading it against ``np.load`` of the same map stored whole, written to a scratch
folder. Also prints the arithmetic for the paper's sizes.

    .venv/bin/python bench/map_store.py [MAPS_FOLDER] [--limit N]

Measured 2026-12-05 (2 cores, smoke maps recomputed in the new format, first 3,000):
585 MiB against 686 MiB whole (1.17x: the smoke's 224 x 224 rough maps are nearly its
pictures' size), MMR changed 0.99 % of the pixels, a read 0.85 ms against 0.22 ms; at the
paper's sizes (518 x 518 rough maps) 1.1 MiB against 4.0 MiB (MVTec AD, 1024 x 1024) and
5.7 MiB (VisA, 1500 x 1000). Maps written before the format (whole ``.npy``) are read as
they are and not counted here.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from clipsam_lib.pipeline import read_map


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("maps", nargs="?", type=Path, default=Path("results/smoke/maps"))
    parser.add_argument("--limit", type=int, default=3000, help="maps read at most")
    args = parser.parse_args()
    files = sorted(args.maps.rglob("*.npz"))[: args.limit]
    if not files:
        parser.error(f"no .npz map under {args.maps}; run `make reproduce` first")
    stored = whole = changed = pixels = 0
    read_new = read_old = 0.0
    with tempfile.TemporaryDirectory(prefix="clipsam-mapstore-") as scratch:
        for number, path in enumerate(files):
            start = time.perf_counter()
            final = read_map(path)
            read_new += time.perf_counter() - start
            with np.load(path) as parts:
                changed += parts["values"].size
            copy = Path(scratch) / f"{number % 64}.npy"  # a rolling set: the page cache
            np.save(copy, final)                         # serves both formats alike
            start = time.perf_counter()
            np.load(copy)
            read_old += time.perf_counter() - start
            stored += path.stat().st_size
            whole += copy.stat().st_size
            pixels += final.size
    n = len(files)
    print(f"{n} maps under {args.maps}")
    print(f"bytes: {stored / 2**20:.1f} MiB as {files[0].suffix} against {whole / 2**20:.1f} "
          f"MiB as float32 .npy: {whole / stored:.2f}x smaller")
    print(f"pixels MMR changed: {100 * changed / pixels:.2f} % of all pixels")
    print(f"read: {1e3 * read_new / n:.2f} ms a map against {1e3 * read_old / n:.2f} ms "
          f"({read_new / read_old:.1f}x), checksum included")
    side, share = 518, changed / pixels
    for name, h, w in (("MVTec AD 1024 x 1024", 1024, 1024), ("VisA 1500 x 1000", 1000, 1500)):
        compact = side * side * 4 + share * h * w * 4
        print(f"paper, {name}: {h * w * 4 / 2**20:.1f} MiB whole, about "
              f"{compact / 2**20:.1f} MiB so (518 x 518 rough map, {100 * share:.1f} % changed)")


if __name__ == "__main__":
    main()
