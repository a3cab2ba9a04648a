"""How much of the miniature's figures is the benchmark's draw: the module ablation and the
SAM ground-truth-box check on several draws of the embedded benchmark (``clipsam_lib.draws``).

The smoke profile evaluates one draw (``synthetic_seed: 0``) of 64 test images per dataset;
notebook 02 adds draws 1-7 (table ``draw_spread``). This runs any number of draws, at any
of the benchmark's sizes, into a scratch folder, and prints each draw's rows, the spread
(mean, sd, min, max), on how many draws each comparison holds, and issue 11's two absolute
targets (baseline pixel AUROC >= 80, SAM median IoU >= 0.6).

    .venv/bin/python bench/draw_spread.py [--seeds 0 1 2 3 4 5 6 7] [--scale small|medium]
                                          [--set KEY=VALUE ...]

``--set`` overrides the smoke profile (YAML values, dotted keys), e.g. ``--set
sam.checkpoint=/path/to/other_sam.safetensors``, so a change is judged on every draw
rather than on the committed one.

About 37 s per small draw and 2 min per medium draw on 2 CPU cores (each draw trains its
own UMCIs and writes its own maps: runs and maps are keyed by the files' bytes, so draws
with the same file names no longer share them; figures for UMCI trained on synth_mvtec
measured before 2026-12-04 are void). Draw 0 at the small scale is the committed one: its
rows match results/smoke/tables/ablation_modules and sam_gt_box_iou to this machine's
rounding. What each recipe measured here: docs/miniature.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--scale", default="small",
                        help="the benchmark's size preset (data.synthetic.SCALES)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="a profile override (dotted key, YAML "
                        "value); repeatable")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the draws' data, caches and results, kept "
                             "(default: a temporary folder, removed at the end)")
    args = parser.parse_args()
    overrides = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: write KEY=VALUE, e.g. sam.checkpoint=sam.safetensors")
        overrides[key] = yaml.safe_load(value)
    if args.work:
        _run(args, overrides, args.work)
        return
    with tempfile.TemporaryDirectory(prefix="clipsam-draws-") as work:  # GBs of runs and maps
        _run(args, overrides, Path(work))


def _run(args: argparse.Namespace, overrides: dict, work: Path) -> None:
    os.environ["CLIPSAM_RESULTS_DIR"] = str(work / "results")

    from clipsam_lib import draws
    from clipsam_lib.config import load_profile
    from clipsam_lib.provenance import COLUMNS
    from clipsam_lib.workspace import Workspace

    profile = load_profile("smoke", synthetic_scale=args.scale,
                           data_dir=str(work / f"data_{args.scale}"),
                           cache_dir=str(work / f"cache_{args.scale}"), **overrides)
    ws = Workspace(profile)
    rows = []
    for seed in args.seeds:
        start = time.perf_counter()
        rows += draws.run_draw(ws, seed)
        print(f"draw {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    pd.set_option("display.width", 220)
    # Provenance is the same on every row here (and text): shown once, not x 100.
    hidden = ["note", *COLUMNS]
    table = pd.DataFrame(rows)
    print("provenance:", table.iloc[0][list(COLUMNS)].to_dict())
    table = table.drop(columns=hidden)
    print((table.set_index(["draw", "train", "dataset", "variant"]) * 100).round(1)
          .to_string())
    spread = draws.spread_table(rows)
    spread = spread.drop(columns=[c for c in hidden if c in spread])
    print("\nOver the draws (x 100 for pixel metrics):")
    print(spread.round(3).to_string(index=False))
    print("\nDraws on which each comparison holds (gaps as fractions):")
    counts = draws.comparison_counts(rows)
    print(counts.drop(columns=[c for c in hidden if c in counts]).round(3)
          .to_string(index=False))
    baseline = table[table["variant"] == "CLIP baseline"]
    sam = table[table["variant"] == draws.SAM_ROW]
    print("\nIssue 11's absolute targets, draws meeting them:")
    for test, group in baseline.groupby("dataset"):
        print(f"  baseline P-AUROC >= 80 on {test}: "
              f"{int((group['pixel_auroc'] >= 0.8).sum())}/{len(group)}")
    for test, group in sam.groupby("dataset"):
        print(f"  SAM median IoU >= 0.6 on {test}: "
              f"{int((group['sam_median_iou'] >= 0.6).sum())}/{len(group)}")


if __name__ == "__main__":
    main()
