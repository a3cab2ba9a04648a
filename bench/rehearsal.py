"""Benchmark: a rehearsal of the paper profile, every stage of every notebook, measured.

The ``rehearsal`` profile is the paper's setting at full size (ViT-L-14-336 at 518 px,
SAM ViT-H, UMCI hidden 768, 15 / 3 epochs, mosaics 0.2) with random weights, on the
embedded benchmark generated at the paper's image sizes. Writes
``results/rehearsal/cost.csv`` (and .md/.tex): one row per stage with seconds, peak RSS,
disk, backbone builds, cache bytes read and the estimate for the paper's image counts.
Then times training epochs with the tokens in RAM and streamed from the cache (the I/O
share of an epoch).

    .venv/bin/python bench/rehearsal.py                       # 1 image per class, < 30 min on 2 cores
    .venv/bin/python bench/rehearsal.py --images-per-class 2 --parts extract fit
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import pandas as pd

from clipsam_lib import paths
from clipsam_lib.config import load_profile
from clipsam_lib.data.synthetic import build_embedded_benchmark
from clipsam_lib.modeling import BACKBONE_BUILDS
from clipsam_lib.rehearsal import rehearse
from clipsam_lib.tables import write_table
from clipsam_lib.train import time_epochs
from clipsam_lib.workspace import Workspace

PARTS = ("extract", "fit", "ablations", "sweeps", "final", "eval_only")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="rehearsal")
    parser.add_argument("--images-per-class", type=int, default=1,
                        help="test images per class in every dataset (train and eval)")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--device", default=None, help="override the profile's device")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", message=".*random.*")  # random init is the point here

    overrides = {"train.max_images_per_class": args.images_per_class,
                 "eval.max_images_per_class": args.images_per_class}
    if args.device:
        overrides["device"] = args.device
    profile = load_profile(args.profile, **overrides)
    start = time.perf_counter()
    build_embedded_benchmark(profile)
    print(f"benchmark built in {time.perf_counter() - start:.0f} s; profile {profile.name}, "
          f"{args.images_per_class} image(s) per class", flush=True)

    ws = Workspace(profile)
    builds_before = dict(BACKBONE_BUILDS)
    cost = rehearse(ws, parts=tuple(args.parts),
                    on_stage=lambda row: print(f"  {row.stage}: {row.seconds:.1f} s, "
                                               f"clip {row.clip_builds} sam {row.sam_builds}",
                                               flush=True))
    out = paths.results_subdir(profile, "tables") / "cost"
    shown = cost.assign(**{
        "peak RSS (GiB)": cost["peak_rss_bytes"] / 2**30,
        "peak GPU (GiB)": cost["peak_gpu_bytes"] / 2**30,
        "disk (MiB)": cost["disk_bytes"] / 2**20,
        "cache read (MiB)": cost["cache_bytes_read"] / 2**20,
        "paper estimate (h)": cost["paper_seconds_estimate"] / 3600,
    })[["stage", "images", "seconds", "peak RSS (GiB)", "peak GPU (GiB)", "disk (MiB)",
        "clip_builds", "sam_builds", "cache read (MiB)", "paper_images", "paper estimate (h)"]]
    write_table(cost, out, rendered=shown, caption=(
        f"Rehearsal of the paper profile ({ws.device}, {os.cpu_count()} cores): cost per "
        "stage, and the estimate for the paper's image counts (linear in images)"))
    (paths.results_dir(profile) / "cost.csv").write_text(cost.to_csv(index=False))
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(shown.round(2).to_string(index=False))
    total = {k: BACKBONE_BUILDS[k] - builds_before.get(k, 0) for k in ("clip", "sam")}
    print(f"backbone builds in this process: CLIP {total['clip']}, SAM {total['sam']} "
          f"(target: at most 1 each)")
    print(f"paper estimate, all stages: {cost['paper_seconds_estimate'].sum() / 3600:.1f} h "
          f"on this machine ({ws.device})")

    if "fit" in args.parts:
        train = profile.directions[0].train
        for label, budget in (("tokens in RAM", None), ("streamed from the cache", 0)):
            epochs = time_epochs(ws, train, epochs=2, budget_bytes=budget)
            last = epochs[-1]
            print(f"epoch I/O share, {label} (training on {train}, epoch {last['epoch']}): "
                  f"{last['read_seconds']:.2f} s of {last['seconds']:.2f} s = "
                  f"{100 * last['read_seconds'] / last['seconds']:.1f} % "
                  f"({last['items']} items; target <= 20 %)")
    print(f"written: {paths.results_dir(profile) / 'cost.csv'}; total "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
