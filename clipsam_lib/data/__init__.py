"""Datasets: the meta.json index of a dataset tree, and its records.

``index_dataset(root, "mvtec")`` reads a tree in one of the four real layouts
(datasets.md) and returns ``{"train": {cls: [rec]}, "test": {cls: [rec]}}``, each record
``{"img_path", "mask_path" ("" for normal), "cls_name", "specie_name", "anomaly",
"width", "height"}`` (+ ``mask_threshold`` for MTD/KSDD2, ``variant`` for KSDD2) with
paths relative to ``root``. ``records(index)`` flattens it for a model loop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from clipsam_lib.data import layouts
from clipsam_lib.data.io import DatasetError
from clipsam_lib.data.layouts import Index, Record
from clipsam_lib.io_utils import write_json_atomic

__all__ = [
    "DATASETS",
    "DatasetError",
    "Index",
    "Record",
    "default_meta_path",
    "index_dataset",
    "load_or_build_index",
    "records",
]

DATASETS = ("mvtec", "visa", "mtd", "ksdd2", "folder")
SPLITS = ("train", "test")


def _check_root(root: Path, dataset: str) -> None:
    if dataset not in DATASETS:
        raise DatasetError(
            f"Dataset layout {dataset!r} is unknown; use one of {', '.join(DATASETS)}."
        )
    if root.exists() and not root.is_dir():
        raise DatasetError(
            f"Dataset root {root} is a file, not a folder; point the root at the extracted "
            f"dataset folder (an archive is installed with `clipsam download --dataset "
            f"{dataset} --root FOLDER --archive {root}`)."
        )
    if not root.is_dir():
        raise DatasetError(
            f"Dataset root {root} does not exist; download it with `clipsam download "
            f"--dataset {dataset} --root {root}` (or fix the path)."
        )


def index_dataset(
    root: str | Path, dataset: str, split: str | None = None, *, mask_threshold: float = 0.0,
    folder: dict[str, Any] | None = None,
) -> Index:
    """Index the tree at ``root`` in the ``dataset`` layout (mvtec, visa, mtd, ksdd2, folder).

    ``split`` matters for KSDD2 only: "test" (official, default) or "train" (the
    peer-compatible variant); the other layouts accept None or "test".
    ``mask_threshold`` is the MTD/KSDD2 labelling threshold (mask value > threshold).
    ``folder``: the folder layout's options (normal, abnormal, masks, class_name).
    Raises DatasetError (one sentence, naming the path and the fix) on a bad tree.
    """
    root = Path(root).expanduser()
    _check_root(root, dataset)
    if dataset == "folder":
        return layouts.index_folder(root, **(folder or {}))
    if dataset == "ksdd2":
        return layouts.index_ksdd2(root, split or "test", mask_threshold)
    if split not in (None, "test"):
        raise DatasetError(f"split={split!r} applies to ksdd2 only; {dataset} has one test split.")
    if dataset == "mvtec":
        return layouts.index_mvtec(root)
    if dataset == "visa":
        return layouts.index_visa(root)
    return layouts.index_mtd(root, mask_threshold)


def default_meta_path(root: str | Path, dataset: str, split: str | None = None) -> Path:
    """``<root>/meta.json``; the KSDD2 peer-compatible variant gets ``meta_peer.json``."""
    name = "meta_peer.json" if dataset == "ksdd2" and split == "train" else "meta.json"
    return Path(root).expanduser() / name


def _matches_request(index: Any, dataset: str, split: str | None, mask_threshold: float) -> bool:
    """Whether a stored meta.json is a usable index for this request."""
    if not isinstance(index, dict) or not all(isinstance(index.get(s), dict) for s in SPLITS):
        return False
    recs = [r for split in SPLITS for rs in index[split].values() for r in rs]
    if not recs or "width" not in recs[0]:  # e.g. a peer's meta.json without sizes
        return False
    if dataset in ("mtd", "ksdd2") and recs[0].get("mask_threshold") != mask_threshold:
        return False
    if dataset == "ksdd2":
        wanted = layouts.KSDD2_VARIANTS[split or "test"]
        return all(r.get("variant") == wanted for rs in index["test"].values() for r in rs)
    return True


def load_or_build_index(
    root: str | Path,
    dataset: str,
    split: str | None = None,
    cache_path: str | Path | None = None,
    *,
    rebuild: bool = False,
    mask_threshold: float = 0.0,
    fallback_dir: str | Path | None = None,
    folder: dict[str, Any] | None = None,
) -> Index:
    """The index stored at ``cache_path`` (default ``default_meta_path``), else build it.

    A stored file is reused when it is a complete index for this request (KSDD2
    variant, MTD/KSDD2 mask threshold); otherwise, or with ``rebuild=True``, the tree is
    indexed again and the file rewritten atomically. When that file cannot be written (a
    dataset on read-only storage), the index goes to ``fallback_dir`` instead (a file
    named after the root), and is read from there next time.
    """
    root = Path(root).expanduser()
    _check_root(root, dataset)
    path = Path(cache_path) if cache_path else default_meta_path(root, dataset, split)
    candidates = [path]
    if fallback_dir is not None:
        candidates.append(_fallback_path(Path(fallback_dir), root, dataset, split))
    # A folder dataset's index depends on its options, which meta.json does not record:
    # it is indexed again on every call (headers only).
    for candidate in candidates if not rebuild and dataset != "folder" else []:
        stored = _read_index(candidate)
        if _matches_request(stored, dataset, split, mask_threshold):
            return stored
    index = index_dataset(root, dataset, split, mask_threshold=mask_threshold, folder=folder)
    for candidate in candidates:
        try:
            write_json_atomic(candidate, index)
            return index
        except OSError as err:  # DiskError included: read-only or full
            last_error = err
    raise DatasetError(
        f"The index of {root} cannot be written to {path} ({last_error.args[0]}); make that "
        "folder writable, or give the profile a writable cache_dir (the index then lives "
        "there), or write it elsewhere with `clipsam index --out FILE`."
    ) from None


def _read_index(path: Path) -> Any:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None  # unreadable: rebuilt


def _fallback_path(folder: Path, root: Path, dataset: str, split: str | None) -> Path:
    """Where the index of a read-only ``root`` lives: named by the root's absolute path."""
    import hashlib

    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return folder / f"{root.name}-{dataset}-{split or 'test'}-{digest}.json"


def _spread(items: list[Record], count: int) -> list[Record]:
    """``count`` items evenly spaced over ``items`` (covers every defect type, not the first)."""
    if count >= len(items):
        return items
    if count <= 0:
        return []
    picks = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in picks]


def _subset(class_records: list[Record], max_count: int) -> list[Record]:
    """At most ``max_count`` records keeping normal and anomalous ones in proportion."""
    if len(class_records) <= max_count:
        return class_records
    normal = [r for r in class_records if not r["anomaly"]]
    anomalous = [r for r in class_records if r["anomaly"]]
    n_anomalous = round(max_count * len(anomalous) / len(class_records))
    if normal and anomalous and max_count >= 2:  # keep at least one of each kind
        n_anomalous = min(max(n_anomalous, 1), max_count - 1)
    kept = _spread(normal, max_count - n_anomalous) + _spread(anomalous, n_anomalous)
    chosen = {id(r) for r in kept}
    return [r for r in class_records if id(r) in chosen]


def records(
    index: Index,
    split: str = "test",
    classes: list[str] | None = None,
    max_per_class: int | None = None,
) -> list[Record]:
    """The records of ``split``, class by class (sorted), in the index's order.

    ``classes`` restricts to those classes (unknown names raise DatasetError);
    ``max_per_class`` keeps an evenly spread subset per class with both normal and
    anomalous images, in the same proportion as the full class.
    """
    if split not in index:
        raise DatasetError(f"The index has no split {split!r}; it has {', '.join(index)}.")
    available = index[split]
    wanted = sorted(available) if classes is None else list(classes)
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise DatasetError(f"Classes {', '.join(unknown)} are not in the {split} split "
                           f"(it has: {', '.join(sorted(available))}); fix the profile's classes.")
    out: list[Record] = []
    for cls in wanted:
        class_records = available[cls]
        out += class_records if max_per_class is None else _subset(class_records, max_per_class)
    return out
