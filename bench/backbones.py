"""How fast are the frozen backbones on this machine, and how much does the cache save?

Prints, for random-init real-size CLIP ViT-L-14-336 at 518 px (the paper's setting), at
batch 1 and at the extraction's batch (8), which ``ClipBackbone`` splits into passes of
``forward_batch`` images (8 on a GPU, 1 for ViT-L on the CPU: ``devices.
clip_extraction_batch``; the ``fwd`` column; ``--whole-batches`` times one unsplit pass),
with open_clip's attention and head by head
(``clip.attention: headwise``, what ``auto`` picks in bf16), and SAM ViT-H at 1024 px
(image encoder only, batch 1 as extraction runs it) with segment-anything's attention
and with the SDPA swap (``sam.attention: sdpa``), in fp32 and bf16 (autocast): seconds
per image, FLOPs per image, achieved FLOP/s, its ratio to this machine's matrix-product
peak in the same dtype (measured here with a large ``torch.matmul``) and the speed-up
over the library's own module. ``--compile`` adds the ``torch.compile`` paths
(``clip.compile``, ``sam.compile``): their first call (the compilation), a second
compilation served by TorchInductor's on-disk cache, and the steady state.
Targets (issue 14): no batch slower per image than batch 1; SAM >= 60 % of
the fp32 peak and >= 50 % of the bf16 one; CLIP >= 60 % in both. Where bf16 has no
hardware support (its peak is under half the fp32 one, as on AVX2-only CPUs) the bf16
backbone runs are skipped unless ``--force-bf16`` and SAM is held to its target in fp32.

Then the cache: a second pass over a dataset whose CLIP features are cached, against the
first pass that computes them (tiny config on the embedded benchmark, and the real-size
ViT-L on a few of its images). Target: >= 20x.

FLOPs: SAM's are counted by ``torch.utils.flop_counter.FlopCounterMode`` (its attention is
plain matmuls). For CLIP the counter misses open_clip's fused attention kernels, so the
count is analytic (every matmul and the patch convolution; multiply-add = 2 FLOPs) and the
counter's partial figure is printed beside it.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/backbones.py [--repeats 2] [--skip-sam]
        [--sam-model vit_b] [--skip-clip] [--clip-batches 1,8] [--skip-cache] [--compile]
        [--dtypes fp32,bf16] [--whole-batches] [--device cuda --sam-batches 1,4]

On a GPU (``--device cuda``) the same rows are timed there, each timing between two
``torch.cuda.synchronize`` calls; ``--sam-batches`` adds SAM encoder batch sizes (the
extraction embeds one image at a time) to find the GPU's best batch.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from clipsam_lib.config import ClipConfig, load_profile
from clipsam_lib.modeling.clip_backbone import ClipBackbone

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Where every timed tensor lives (``--device``; set once in ``main``).
DEVICE = torch.device("cpu")


def autocast(dtype: str):
    return torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=dtype == "bf16")


def seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    return statistics.median(_timed(fn) for _ in range(repeats))


def matmul_peak(dtype: str, repeats: int = 5, min_seconds: float = 0.3) -> float:
    """Best FLOP/s of an n x n x n matrix product in ``dtype`` (the machine's peak).

    n doubles from 256 until one product takes ``min_seconds`` (or n = 4096): big enough to
    reach the peak, small enough that a dtype without hardware support (bf16 on a CPU
    without AVX512-BF16/AMX runs ~200x below fp32) does not take hours.
    """
    n = 256
    while True:
        a = torch.randn(n, n, dtype=DTYPES[dtype], device=DEVICE)
        b = torch.randn(n, n, dtype=DTYPES[dtype], device=DEVICE)
        first = _timed(functools.partial(torch.matmul, a, b))
        if first >= min_seconds or n >= (16384 if DEVICE.type == "cuda" else 4096):
            break
        n *= 2
    best = min(_timed(functools.partial(torch.matmul, a, b)) for _ in range(repeats))
    return 2 * n**3 / best


def _synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def _timed(fn: Callable[[], object]) -> float:
    """Wall time of ``fn``, waiting for the GPU's queued work on both sides."""
    _synchronize()
    start = time.perf_counter()
    fn()
    _synchronize()
    return time.perf_counter() - start


def clip_analytic_flops(
    image_size: int, patch: int, width: int, layers: int, mlp_ratio: float = 4.0
) -> int:
    """ViT forward through all blocks: patch conv, qkv/out projections, attention, MLP."""
    grid = image_size // patch
    tokens = grid * grid + 1
    conv = 2 * grid * grid * (3 * patch * patch) * width
    projections = 2 * tokens * width * (3 * width + width)
    attention = 2 * 2 * tokens * tokens * width  # Q K^T and A V
    mlp = 2 * 2 * tokens * width * int(mlp_ratio * width)
    return conv + layers * (projections + attention + mlp)


def counted_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def result_row(model: str, dtype: str, sec: float, flops: int, counted: int,
               peak: float) -> dict:
    """One printed row: ``flops`` drive the rates; ``counted`` is FlopCounterMode's figure."""
    return {
        "model": model,
        "dtype": dtype,
        "s/img": sec,
        "GFLOP": flops / 1e9,
        "counter GFLOP": counted / 1e9,
        "GFLOP/s": flops / sec / 1e9,
        "peak": peak,
        "of peak": flops / sec / peak,
    }


CLIP_EXTRACTION_BATCH = 8  # devices.clip_extraction_batch on a GPU (ViT-L's on the CPU: 1)
SAM_EXTRACTION_BATCH = 1  # SamBackbone.embed: one image through SamPredictor.set_image


def first_call(run: Callable[[], object], compile_: bool) -> dict:
    """Time the first call (where a compiled path compiles) and, for a compiled path, a
    second compilation after ``torch._dynamo.reset()``, which TorchInductor's on-disk cache
    serves: what a second process pays."""
    out = {"first call": _timed(run)}
    if compile_:
        torch._dynamo.reset()
        out["cached compile call"] = _timed(run)
    return out


def bench_clip(dtype: str, repeats: int, peak: float, batches: tuple[int, ...] = (1,),
               attention: str = "library", compile_: bool = False,
               whole_batch: bool = False) -> list[dict]:
    """CLIP's image tower as extraction runs it (``ClipBackbone.encode_stages``, which
    splits a batch into ``forward_batch`` images per pass); ``whole_batch``: one pass.

    One row per batch size. The sizes are timed in turn within each of ``repeats``
    rounds, and a batch's ratio to batch 1 is the median of the per-round ratios: on a
    shared machine the speed drifts by 10-20 % over minutes, which timings of the two
    sizes taken minutes apart would read as a batch effect.
    """
    cfg = ClipConfig(
        model_name="ViT-L-14-336",
        pretrained=None,
        image_size=518,
        stages=(6, 12, 18, 24),
        dtype=dtype,
        attention=attention,
        compile=compile_,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = ClipBackbone(cfg, DEVICE)
    if whole_batch:
        clip.forward_batch = max(batches)
    pixels = {batch: torch.randn(batch, 3, 518, 518, device=DEVICE) for batch in batches}

    def run(batch: int):
        return clip.encode_stages(pixels[batch])

    flops = clip_analytic_flops(518, 14, 1024, 24)
    firsts = {batch: first_call(lambda b=batch: run(b), compile_) for batch in batches}
    # FlopCounterMode sees no matmuls inside a compiled graph: count the eager module's.
    partial = 0 if compile_ else counted_flops(lambda: run(batches[0])) // batches[0]
    per_image: dict[int, list[float]] = {batch: [] for batch in batches}
    for _ in range(repeats):
        for batch in batches:
            per_image[batch].append(_timed(lambda b=batch: run(b)) / batch)
    rows = []
    for batch in batches:
        sec = statistics.median(per_image[batch])
        row = result_row("CLIP ViT-L-14-336 @518", dtype, sec, flops, partial, peak)
        if 1 in per_image and batch != 1:
            row["ratio to batch 1"] = statistics.median(
                t / one for t, one in zip(per_image[batch], per_image[1]))
        rows.append({**row, **firsts[batch], "batch": batch,
                     "forward batch": min(batch, clip.forward_batch),
                     "path": attention + ("+compiled" if compile_ else "")})
    return rows


def bench_sam(dtype: str, repeats: int, peak: float, model: str = "vit_h",
              attention: str = "library", batch: int = 1, compile_: bool = False) -> dict:
    """SAM's image encoder, with segment-anything's attention or the SDPA swap, eager or
    compiled in place as ``SamBackbone`` does (``sam.compile``)."""
    from segment_anything import sam_model_registry

    from clipsam_lib.modeling.sam_attention import swap_attention

    torch.manual_seed(0)
    encoder = sam_model_registry[model](checkpoint=None).image_encoder.eval().requires_grad_(False)
    swap_attention(encoder, attention)
    encoder.to(DEVICE)
    pixels = torch.randn(batch, 3, 1024, 1024, device=DEVICE)

    def run():
        with torch.no_grad(), autocast(dtype):
            return encoder(pixels)

    flops = 0 if compile_ else counted_flops(run) // batch  # rated with the library's below
    if compile_:
        encoder.compile(dynamic=False)
    first = first_call(run, compile_)
    sec = seconds(run, repeats, warmup=0) / batch
    row = result_row(f"SAM {model} @1024 (image encoder)", dtype, sec, flops, flops, peak)
    path = attention + ("+compiled" if compile_ else "")
    return {**row, **first, "batch": batch, "forward batch": batch, "path": path}


def bench_cache(overrides: dict, n_images: int | None, label: str) -> None:
    """First pass (cold cache, builds the backbone) vs second pass (everything cached)."""
    from clipsam_lib import paths
    from clipsam_lib.data import load_or_build_index, records
    from clipsam_lib.data.synthetic import build_embedded_benchmark
    from clipsam_lib.features import ClipFeatureStore, extract_clip_features

    profile = load_profile("smoke")
    build_embedded_benchmark(profile)
    spec = profile.dataset("synth_visa")
    index = load_or_build_index(paths.dataset_root(profile, spec.name), spec.layout, spec.split)
    recs = records(index, "test")
    if n_images is not None:  # a few images of one class: one prompt ensemble to encode
        recs = [r for r in recs if r["cls_name"] == recs[0]["cls_name"]][:n_images]
    with tempfile.TemporaryDirectory() as cache, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        profile = profile.replace(cache_dir=cache, **overrides)

        def second_pass():
            extract_clip_features(profile, spec.name, recs, progress=False)  # finds all cached
            store = ClipFeatureStore(profile)  # then reads every entry, as training does
            return [store.tokens(spec.name, rec) for rec in recs]

        start = time.perf_counter()
        first = extract_clip_features(profile, spec.name, recs, progress=False)
        first_s = time.perf_counter() - start
        second_s = seconds(second_pass, repeats=3, warmup=0)
    images_s = first_s - first.text_seconds
    print(
        f"  {label}: {len(recs)} images; first pass {first_s:.2f} s ({first.computed} images "
        f"computed, backbone built; of which {first.text_seconds:.2f} s for "
        f"{first.texts_computed} class texts), second pass {second_s:.3f} s (all cached, "
        f"tokens read) -> {first_s / second_s:.0f}x ({images_s / second_s:.0f}x without the "
        f"texts); cache {first.cache_bytes / 2**20:.1f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per case (median)")
    parser.add_argument("--skip-sam", action="store_true")
    parser.add_argument("--skip-cache", action="store_true")
    parser.add_argument("--force-bf16", action="store_true",
                        help="time the backbones in bf16 even where bf16 matmuls are slow")
    parser.add_argument("--sam-model", default="vit_h", help="vit_h (paper), vit_l, vit_b")
    parser.add_argument("--skip-clip", action="store_true")
    parser.add_argument("--clip-batches", default=f"1,{CLIP_EXTRACTION_BATCH}",
                        help="CLIP batch sizes (default: 1 and the extraction's)")
    parser.add_argument("--dtypes", default="fp32,bf16", help="which of fp32,bf16 to time")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--sam-batches", default="1",
                        help="SAM encoder batch sizes (extraction runs 1; on a GPU try 1,4)")
    parser.add_argument("--whole-batches", action="store_true",
                        help="run each CLIP batch as one forward pass (not split into the "
                             "backbone's forward_batch), to time the unsplit batch")
    parser.add_argument("--compile", action="store_true",
                        help="also time the torch.compile paths (clip.compile, sam.compile)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if args.compile:
        from clipsam_lib.modeling.compiled import use_cache_folder

        print(f"TorchInductor cache: {use_cache_folder(tempfile.mkdtemp(prefix='inductor-'))}")
    sys.stdout.reconfigure(line_buffering=True)  # progress shows when redirected to a file
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.2f}, device "
        f"{torch.cuda.get_device_name(DEVICE) if DEVICE.type == 'cuda' else 'cpu'}"
    )
    peaks = {dtype: matmul_peak(dtype) for dtype in DTYPES}
    for dtype, peak in peaks.items():
        print(f"matmul peak {dtype}: {peak / 1e9:.1f} GFLOP/s (square product, best of 5)")
    dtypes = [d for d in args.dtypes.split(",") if d in DTYPES]
    if peaks["bf16"] < 0.5 * peaks["fp32"] and not args.force_bf16:
        # A real-size backbone at this rate would take the better part of an hour.
        print(f"bf16 runs at {peaks['bf16'] / peaks['fp32']:.3f}x the fp32 peak on this CPU "
              "(no native bf16 matrix unit): bf16 backbone timings skipped, use fp32 here "
              "(--force-bf16 runs them anyway)")
        dtypes = [d for d in dtypes if d == "fp32"]
    rows = []
    if not args.skip_clip:
        batches = [int(b) for b in args.clip_batches.split(",")]
        clip_paths = [("library", False), ("headwise", False)]
        clip_paths += [("headwise", True)] if args.compile else []
        for dtype in dtypes:
            for attention, compile_ in clip_paths:
                rows += bench_clip(dtype, args.repeats, peaks[dtype], tuple(batches),
                                   attention, compile_, args.whole_batches)
    if not args.skip_sam:
        sam_paths = [("library", False), ("sdpa", False)]
        sam_paths += [("sdpa", True)] if args.compile else []
        rows += [bench_sam(dtype, args.repeats, peaks[dtype], args.sam_model, attention,
                           int(batch), compile_)
                 for dtype in dtypes for batch in args.sam_batches.split(",")
                 for attention, compile_ in sam_paths]
    print(
        f"\n{'model':34s} {'dtype':5s} {'batch':>5s} {'fwd':>3s} {'path':13s} {'s/img':>7s} "
        f"{'GFLOP':>7s} {'counter':>8s} {'GFLOP/s':>8s} {'of peak':>8s} {'vs library':>10s} "
        f"{'1st call':>8s} {'cached':>7s}"
    )
    library = {(r["model"], r["dtype"], r["batch"]): r for r in rows
               if r["path"] == "library"}
    for r in rows:  # FlopCounterMode misses SDPA's products: rate the same work as the library
        same = library[(r["model"], r["dtype"], r["batch"])]
        r["GFLOP"], r["counter GFLOP"] = same["GFLOP"], r["counter GFLOP"]
        r["GFLOP/s"] = r["GFLOP"] / r["s/img"]
        r["of peak"] = r["GFLOP/s"] * 1e9 / r["peak"]
    for r in rows:
        speedup = library[(r["model"], r["dtype"], r["batch"])]["s/img"] / r["s/img"]
        cached = r.get("cached compile call")
        print(
            f"{r['model']:34s} {r['dtype']:5s} {r['batch']:5d} {r['forward batch']:3d} "
            f"{r['path']:13s} "
            f"{r['s/img']:7.3g} {r['GFLOP']:7.0f} {r['counter GFLOP']:8.0f} "
            f"{r['GFLOP/s']:8.1f} {100 * r['of peak']:7.1f}% {speedup:9.2f}x "
            f"{r['first call']:7.1f}s {'' if cached is None else f'{cached:6.1f}s'}"
        )
    for r in rows:
        if "ratio to batch 1" in r:
            # 5 %: the spread of the per-round ratios on a shared 2-core machine.
            ratio = r["ratio to batch 1"]
            verdict = "met" if ratio <= 1.05 else "MISSED"
            print(f"target {r['model']} {r['dtype']} {r['path']} batch {r['batch']} no slower "
                  f"per image than batch 1: {verdict} ({ratio:.2f}x, median of "
                  f"{args.repeats} rounds that time both sizes in turn)")
    for r in rows:
        # issue 14: SAM >= 60 % of the fp32 peak, >= 50 % of the bf16 one; CLIP >= 60 %.
        targets = {("CLIP", "fp32"): 0.60, ("CLIP", "bf16"): 0.60,
                   ("SAM", "fp32"): 0.60, ("SAM", "bf16"): 0.50}
        target = targets.get((r["model"][:4].strip(), r["dtype"]))
        if target is not None:
            verdict = "met" if r["of peak"] >= target else "MISSED"
            print(
                f"target {r['model']} {r['dtype']} {r['path']} batch {r['batch']} >= "
                f"{100 * target:.0f}% of peak: {verdict} ({100 * r['of peak']:.1f}%)"
            )
    print(f"load average after the backbones: {os.getloadavg()[0]:.2f}")
    if not args.skip_cache:
        print("\nfeature cache (target: second pass >= 20x faster):")
        bench_cache({}, None, "tiny clipsam-tiny-vit @224 fp32, synth_visa test split")
        bench_cache(
            {
                "clip.model_name": "ViT-L-14-336",
                "clip.image_size": 518,
                "clip.stages": [6, 12, 18, 24],
                "clip.dtype": dtypes[-1],
            },
            4,
            f"ViT-L-14-336 @518 {dtypes[-1]} (random init), 4 synth_visa images of one class",
        )


if __name__ == "__main__":
    main()
