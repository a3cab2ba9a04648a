"""`clipsam` command line: index, download, build-benchmark, check, predict, pretrain-mini,
run, clean.

Errors a user can cause (``clipsam_lib.errors.UserError`` and its kinds) are printed as
one line each (no traceback) with exit code 2; any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DATASETS = ("mvtec", "visa", "mtd", "ksdd2")
INDEXABLE = (*DATASETS, "folder")


def _cmd_index(args: argparse.Namespace) -> None:
    from clipsam_lib.data import default_meta_path, index_dataset
    from clipsam_lib.io_utils import write_json_atomic

    folder = None
    if args.dataset == "folder":
        folder = {"normal": args.normal, "abnormal": args.abnormal.split(","), "masks": args.masks}
    meta = index_dataset(args.root, args.dataset, split=args.split, folder=folder)
    out = Path(args.out) if args.out else default_meta_path(args.root, args.dataset, args.split)
    write_json_atomic(out, meta)
    counts = {split: sum(len(v) for v in meta[split].values()) for split in meta}
    print(f"wrote {out}: {json.dumps(counts)}")


def _cmd_download(args: argparse.Namespace) -> None:
    from clipsam_lib.data.download import download_dataset

    root = download_dataset(args.dataset, args.root, archive=args.archive, url=args.url)
    print(f"{args.dataset} ready at {root}")


def _cmd_build_benchmark(args: argparse.Namespace) -> None:
    from clipsam_lib.config import load_profile
    from clipsam_lib.data.synthetic import build_embedded_benchmark

    roots = build_embedded_benchmark(load_profile(args.profile), force=args.force)
    for name, root in roots.items():
        print(f"{name}: {root}")


def _cmd_check(args: argparse.Namespace) -> None:
    from clipsam_lib.config import load_profile
    from clipsam_lib.preflight import preflight

    report = preflight(load_profile(args.profile), deep=args.deep)
    print("\n".join(report.lines()))
    report.raise_for_problems()


def _cmd_predict(args: argparse.Namespace) -> None:
    from clipsam_lib.config import load_profile
    from clipsam_lib.predict import predict_images

    run = predict_images(load_profile(args.profile), args.inputs, args.class_name, args.out,
                         umci=args.umci, skip_bad=args.skip_bad,
                         per_image_scale=args.per_image_scale)
    print(f"UMCI {run.umci_source}: {run.umci}")
    for item in run.written:
        print(f"{item.image}: image score {item.image_score:.4f} -> {item.overlay}")
    for line in run.skipped:
        print(f"skipped {line}")
    print(f"{len(run.written)} image(s) written to {args.out}, {len(run.skipped)} skipped")


def _cmd_pretrain_mini(args: argparse.Namespace) -> None:
    from clipsam_lib.mini import RECIPES, WEIGHTS_FOLDER, pretrain_mini, recipe_hash

    which = tuple(args.only.split(",")) if args.only else tuple(RECIPES)
    written = pretrain_mini(which, Path(args.out) if args.out else WEIGHTS_FOLDER,
                            resume=not args.fresh)
    for name, path in written.items():
        print(f"mini {name}: {path} (recipe {recipe_hash(RECIPES[name])})")


def _cmd_run(args: argparse.Namespace) -> None:
    from clipsam_lib.runner import run_notebooks

    run_notebooks(args.profile, start=args.start, only=args.only, deep_check=args.deep)


def _cmd_clean(args: argparse.Namespace) -> None:
    from clipsam_lib.cleanup import compile_cache, remove, stale_folders
    from clipsam_lib.config import load_profile

    profile = load_profile(args.profile)
    stale, notes = stale_folders(profile)
    for line in [*notes, *(folder.line() for folder in stale)]:
        print(line)
    compiled = compile_cache(profile)
    if compiled is not None:
        print(f"{compiled.path} ({compiled.size_bytes / 2**30:.2f} GiB): TorchInductor's "
              "compiled kernels, rebuilt on demand; `--delete --compiled` removes them too")
    total = sum(folder.size_bytes for folder in stale) / 2**30
    if not args.delete:
        print(f"{len(stale)} folder(s), {total:.2f} GiB, unused by the latest complete run"
              + (": `--delete` removes them" if stale else ""))
        return
    removing = [*stale, compiled] if args.compiled and compiled is not None else stale
    print(f"removed {len(removing)} folder(s), {remove(removing) / 2**30:.2f} GiB")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipsam", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="write meta.json for a dataset folder")
    p.add_argument("--dataset", required=True, choices=INDEXABLE)
    p.add_argument("--root", required=True)
    p.add_argument("--split", default=None, help="ksdd2 only: test (official) or train (peer)")
    p.add_argument("--out", default=None,
                   help="default: <root>/meta.json (ksdd2 --split train: meta_peer.json)")
    p.add_argument("--normal", default="good", help="folder layout: the normal images' folder")
    p.add_argument("--abnormal", default="bad",
                   help="folder layout: abnormal folders, comma-separated (bad1,bad2)")
    p.add_argument("--masks", default=None,
                   help="folder layout: the masks' folder (none: image-level evaluation only)")
    p.set_defaults(func=_cmd_index)

    p = sub.add_parser("download", help="download (or take --archive), verify sha256, extract")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--root", required=True)
    p.add_argument("--archive", default=None, help="an archive you downloaded by hand")
    p.add_argument("--url", default=None, help="another download link (the sha256 is still checked)")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("build-benchmark", help="build the embedded synthetic benchmark")
    p.add_argument("--profile", default="smoke")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.set_defaults(func=_cmd_build_benchmark)

    p = sub.add_parser("check", help="the preflight alone: weights, datasets, disk, problems")
    p.add_argument("--profile", default="smoke")
    p.add_argument("--deep", action="store_true",
                   help="decode every image and mask fully (finds truncated files)")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("predict", help="ClipSAM on your own images or folders of images")
    p.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--class", dest="class_name", required=True,
                   help="what the images show, e.g. bottle (any name: zero-shot)")
    p.add_argument("--profile", default="smoke")
    p.add_argument("--umci", default=None, help="a trained UMCI (default: the profile's)")
    p.add_argument("--out", default="predictions", help="output folder (default predictions/)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable images and list them (default: stop at the first)")
    p.add_argument("--per-image-scale", action="store_true",
                   help="heat maps on each map's own min-max instead of [0, 1]")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("pretrain-mini",
                       help="pretrain the mini CLIP and SAM of the embedded default (~25 min)")
    p.add_argument("--only", default=None, help="clip or sam (default: both)")
    p.add_argument("--out", default=None,
                   help="output folder (default: the package's mini_weights/, the committed files)")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    p.set_defaults(func=_cmd_pretrain_mini)

    p = sub.add_parser("clean", help="list (or --delete) cache, UMCI and map folders the "
                       "latest complete run did not use")
    p.add_argument("--profile", default="smoke")
    p.add_argument("--delete", action="store_true", help="remove them (default: only list)")
    p.add_argument("--compiled", action="store_true",
                   help="with them, TorchInductor's compiled-kernel cache (rebuilt on demand)")
    p.set_defaults(func=_cmd_clean)

    p = sub.add_parser("run", help="execute the numbered notebooks through papermill")
    p.add_argument("--profile", default="smoke")
    p.add_argument("--deep", action="store_true", help="a deep preflight (see check)")
    p.add_argument("--from", dest="start", default=None, help="start at notebook NN")
    p.add_argument("--only", default=None, help="run only notebook NN")
    p.set_defaults(func=_cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from clipsam_lib.errors import UserError
    from clipsam_lib.runner import NotebookFailed

    try:
        args.func(args)
    except (UserError, NotebookFailed) as err:
        # Errors a user can cause carry one-sentence messages (one per line): just those.
        message = err.args[0] if err.args else str(err)
        print(f"clipsam {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
