"""One indexer per on-disk layout: MVTec AD, raw VisA, MTD, KSDD2 (datasets.md).

Each returns the meta.json dict ``{"train": {cls: [rec]}, "test": {cls: [rec]}}`` with
paths relative to the dataset root, classes in sorted order and each class's records
sorted by ``img_path``, so the same tree always gives the same index. Every image's
size is read from its header and checked against its mask's, so a broken tree fails
here, with the file's name, rather than halfway through an evaluation.
"""

from __future__ import annotations

import csv
import unicodedata
from pathlib import Path
from typing import Any

from clipsam_lib.data.io import DatasetError, image_size, mask_size_error, read_mask

Record = dict[str, Any]
Index = dict[str, dict[str, list[Record]]]

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
VISA_HEADER = ["object", "split", "label", "image", "mask"]
KSDD2_VARIANTS = {"test": "official", "train": "peer_compatible"}


def _images_in(folder: Path, extensions: set[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files of ``folder`` (not hidden), sorted by name."""
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions
    )


def _record(
    root: Path, image: Path, mask: Path | None, cls_name: str, specie_name: str,
    **extra: Any,
) -> Record:
    """One meta.json record; ``mask=None`` means a normal image. Sizes read from headers."""
    width, height = image_size(image)
    if mask is not None:
        mask_width, mask_height = image_size(mask)
        if (mask_width, mask_height) != (width, height):
            raise mask_size_error(mask, (mask_height, mask_width), (height, width))
    return _make_record(root, image, mask, cls_name, specie_name, (width, height), **extra)


def _make_record(
    root: Path, image: Path, mask: Path | None, cls_name: str, specie_name: str,
    size: tuple[int, int], **extra: Any,
) -> Record:
    return {
        "img_path": image.relative_to(root).as_posix(),
        "mask_path": mask.relative_to(root).as_posix() if mask is not None else "",
        "cls_name": cls_name,
        "specie_name": specie_name,
        "anomaly": int(mask is not None),
        "width": size[0],
        "height": size[1],
        **extra,
    }


def _sorted_index(index: Index) -> Index:
    return {
        split: {cls: sorted(recs, key=lambda r: r["img_path"]) for cls, recs in sorted(d.items())}
        for split, d in index.items()
    }


# -- MVTec AD ------------------------------------------------------------------------------
def index_mvtec(root: Path) -> Index:
    """MVTec AD: ``<cls>/train/good``, ``<cls>/test/<defect>``, ``<cls>/ground_truth``.

    Defect masks are ``ground_truth/<defect>/<stem>_mask.png``, paired with their image
    by stem, never by sorted position.
    """
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and (d / "test").is_dir())
    if not class_dirs:
        raise DatasetError(
            f"{root} is not an MVTec AD tree: expected <class>/test/<defect>/NNN.png, "
            f"<class>/train/good/NNN.png and <class>/ground_truth/<defect>/NNN_mask.png; "
            f"point --root at the folder that holds the class folders (bottle, cable, ...)."
        )
    index: Index = {"train": {}, "test": {}}
    for class_dir in class_dirs:
        cls = class_dir.name
        train_good = class_dir / "train" / "good"
        index["train"][cls] = (
            [_record(root, p, None, cls, "") for p in _images_in(train_good)]
            if train_good.is_dir() else []
        )
        index["test"][cls] = _mvtec_test_records(root, class_dir)
    return _sorted_index(index)


def _mvtec_test_records(root: Path, class_dir: Path) -> list[Record]:
    records = []
    for defect_dir in sorted(d for d in (class_dir / "test").iterdir() if d.is_dir()):
        defect = defect_dir.name
        for image in _images_in(defect_dir):
            if defect == "good":
                records.append(_record(root, image, None, class_dir.name, ""))
                continue
            # Pair by stem: sorted positions drift as soon as one file is missing.
            mask = class_dir / "ground_truth" / defect / f"{image.stem}_mask.png"
            if not mask.is_file():
                raise DatasetError(
                    f"Mask {mask} of the defective image {image} is missing (MVTec AD pairs "
                    f"NNN.png with ground_truth/<defect>/NNN_mask.png); re-extract the archive."
                )
            records.append(_record(root, image, mask, class_dir.name, defect))
    return records


# -- VisA (raw layout with split_csv/1cls.csv) ---------------------------------------------
def index_visa(root: Path) -> Index:
    """Rows of ``split_csv/1cls.csv`` (object,split,label,image,mask; paths relative to root)."""
    csv_path = root / "split_csv" / "1cls.csv"
    if not csv_path.is_file():
        raise DatasetError(
            f"{csv_path} is missing, so {root} is not a raw VisA tree: expected "
            f"split_csv/1cls.csv beside <class>/Data/Images/{{Normal,Anomaly}}/*.JPG; point "
            f"--root at the extracted VisA_20220922 folder."
        )
    rows = _read_csv(csv_path)
    header = [c.strip() for c in rows[0]] if rows else []
    if header != VISA_HEADER:
        raise DatasetError(
            f"{csv_path} starts with {','.join(header) or 'nothing'} but a VisA split file "
            f"starts with the header {','.join(VISA_HEADER)}; use the 1cls.csv of the archive."
        )
    index: Index = {"train": {}, "test": {}}
    seen: dict[str, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        split, cls, record = _visa_row(root, csv_path, line, row)
        if record["img_path"] in seen:
            raise DatasetError(
                f"{csv_path} lines {seen[record['img_path']]} and {line} both list "
                f"{record['img_path']}; remove the duplicate (or use the archive's 1cls.csv).")
        seen[record["img_path"]] = line
        index["train"].setdefault(cls, [])
        index["test"].setdefault(cls, [])
        index[split][cls].append(record)
    if not seen:
        raise DatasetError(f"{csv_path} has a header but no rows; use the 1cls.csv of the "
                           "archive.")
    return _sorted_index(index)


def _read_csv(path: Path) -> list[list[str]]:
    """The rows of a UTF-8 CSV (a BOM is tolerated); other encodings are a DatasetError."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return list(csv.reader(handle))
    except UnicodeDecodeError as err:
        raise DatasetError(
            f"{path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
            f"{err.start}); save it as UTF-8, or use the 1cls.csv of the archive."
        ) from None


def _in_root(root: Path, relative: str, where: str) -> Path:
    """``root / relative`` for a path a split file names: relative, inside the root, and
    found even when the file system stores its name in another Unicode normalization."""
    candidate = Path(relative)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise DatasetError(
            f"{where} names {relative!r}, which is {'absolute' if candidate.is_absolute() else 'outside the dataset root'}; "
            "paths in the split file are relative to the dataset root: fix the row.")
    path = root / candidate
    if path.exists():
        return path
    for form in ("NFC", "NFD"):
        variant = root / unicodedata.normalize(form, relative)
        if variant.exists():
            return variant  # same name, other normalization (e.g. copied from macOS)
    return path


def _visa_row(root: Path, csv_path: Path, line: int, row: list[str]) -> tuple[str, str, Record]:
    where = f"{csv_path} line {line}"
    if len(row) != len(VISA_HEADER):
        raise DatasetError(f"{where} has {len(row)} fields, not 5 ({','.join(VISA_HEADER)}); "
                           f"fix the row or use the 1cls.csv of the archive.")
    cls, split, label, image, mask = (cell.strip() for cell in row)
    if split not in ("train", "test") or label not in ("normal", "anomaly"):
        raise DatasetError(f"{where} has split={split!r}, label={label!r}; expected split "
                           f"train|test and label normal|anomaly: fix the row.")
    image_path = _in_root(root, image, where)
    if not image_path.is_file():
        raise DatasetError(f"{where} points at {image_path}, which does not exist; re-extract "
                           f"the VisA archive into {root} (or fix the row).")
    mask_path = None
    if label == "anomaly":
        mask_path = _in_root(root, mask, where) if mask else None
        if mask_path is None or not mask_path.is_file():
            raise DatasetError(f"{where} is an anomaly whose mask {mask_path or '(empty)'} does "
                               f"not exist; re-extract the VisA archive into {root}.")
    # VisA has no defect-type column; the peers' meta.json leave specie_name empty too.
    return split, cls, _record(root, image_path, mask_path, cls, "")


# -- MTD (Magnetic Tile Defects) -----------------------------------------------------------
def index_mtd(root: Path, mask_threshold: float = 0.0) -> Index:
    """``MT_<type>/Imgs/<stem>.jpg`` + ``<stem>.png``; every image is a test image.

    The label comes from the mask (any pixel > ``mask_threshold``), as in the zero-shot
    practice of the peers; the masks are anti-aliased, so the threshold is recorded.
    """
    folders = sorted(
        d for d in root.iterdir()
        if d.is_dir() and d.name.startswith("MT_") and (d / "Imgs").is_dir()
    )
    if not folders:
        raise DatasetError(
            f"{root} is not an MTD tree: expected MT_<defect>/Imgs/<stem>.jpg with <stem>.png "
            f"beside it; point --root at the cloned Magnetic-tile-defect-datasets. folder."
        )
    records = []
    for folder in folders:
        for image in _images_in(folder / "Imgs", {".jpg", ".jpeg"}):
            mask = image.with_suffix(".png")
            if not mask.is_file():
                raise DatasetError(f"Mask {mask} of {image} is missing (MTD keeps <stem>.png "
                                   f"beside <stem>.jpg); clone the repository again.")
            records.append(_labelled_by_mask(
                root, image, mask, "mtd", folder.name[3:].lower(), mask_threshold=mask_threshold,
            ))
    return {"train": {}, "test": {"mtd": sorted(records, key=lambda r: r["img_path"])}}


def _labelled_by_mask(
    root: Path, image: Path, mask: Path, cls: str, specie: str, mask_threshold: float,
    **extra: Any,
) -> Record:
    """A record whose label is 'the mask has a pixel above the threshold'."""
    width, height = image_size(image)
    mask_array = read_mask(mask, mask_threshold)
    if mask_array.shape != (height, width):  # checked for normal images too
        raise mask_size_error(mask, mask_array.shape, (height, width))
    defective = bool(mask_array.any())
    return _make_record(
        root, image, mask if defective else None, cls, specie if defective else "",
        (width, height), mask_threshold=mask_threshold, **extra,
    )


# -- KSDD2 (Kolektor Surface-Defect Dataset 2) ---------------------------------------------
def index_ksdd2(root: Path, split: str = "test", mask_threshold: float = 0.0) -> Index:
    """Flat ``train/`` and ``test/`` folders of ``NNNNN.png`` + ``NNNNN_GT.png``.

    ``split="test"`` (official): test = the ``test/`` folder, train = the ``train/``
    folder. ``split="train"`` (peer-compatible, what SAA+ evaluates): test = the
    ``train/`` folder. Each record's ``variant`` says which.
    """
    if split not in KSDD2_VARIANTS:
        raise DatasetError(f"KSDD2 split {split!r} is unknown; use 'test' (official) or "
                           f"'train' (the peer-compatible variant).")
    missing = [name for name in ("train", "test") if not (root / name).is_dir()]
    if missing:
        raise DatasetError(
            f"{root} is not a KSDD2 tree: {' and '.join(m + '/' for m in missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing; expected train/ "
            f"and test/ holding NNNNN.png with NNNNN_GT.png; point --root at KolektorSDD2."
        )
    variant = KSDD2_VARIANTS[split]

    def folder(name: str) -> list[Record]:
        records = []
        for image in _images_in(root / name):
            if image.stem.endswith("_GT"):
                continue
            mask = image.with_name(f"{image.stem}_GT.png")
            if not mask.is_file():
                raise DatasetError(f"Mask {mask} of {image} is missing (KSDD2 keeps NNNNN_GT.png "
                                   f"beside NNNNN.png); re-extract KolektorSDD2.zip.")
            records.append(_labelled_by_mask(root, image, mask, "ksdd2", "defect",
                                             mask_threshold, variant=variant))
        return records

    if split == "train":
        return {"train": {}, "test": {"ksdd2": folder("train")}}
    return {"train": {"ksdd2": folder("train")}, "test": {"ksdd2": folder("test")}}


# -- folder (anomalib's convention: your own data) -------------------------------------------
FOLDER_DEFAULTS = {"normal": "good", "abnormal": ("bad",), "masks": None}


def index_folder(
    root: Path,
    normal: str = "good",
    abnormal: tuple[str, ...] | list[str] = ("bad",),
    masks: str | None = None,
    class_name: str | None = None,
) -> Index:
    """``<root>/<normal>/*``, ``<root>/<abnormal>/*`` for each abnormal folder, and optional
    masks ``<root>/<masks>/[<abnormal>/]<stem>[_mask].<ext>`` paired by stem.

    One class, named ``class_name`` or the root folder's name; the abnormal folder is each
    image's defect type. Without masks every record is ``mask_free``: the evaluation then
    gives image-level metrics only (and says so), and the set cannot be trained on.
    """
    cls = class_name or root.name
    folders = {"normal": root / normal, **{name: root / name for name in abnormal}}
    for folder in folders.values():
        if not folder.is_dir():
            raise DatasetError(
                f"{folder} does not exist: the folder layout expects <root>/{normal}/ for normal "
                f"images and <root>/<name>/ for each abnormal folder ({', '.join(abnormal)}); "
                "fix --normal/--abnormal (or the profile's normal/abnormal).")
    mask_root = root / masks if masks else None
    if mask_root is not None and not mask_root.is_dir():
        raise DatasetError(f"Mask folder {mask_root} does not exist; fix --masks (or drop it "
                           "for image-level evaluation only).")
    extra = {} if mask_root is not None else {"mask_free": True}
    records = [_record(root, p, None, cls, "", **extra) for p in _images_in(folders["normal"])]
    for name in abnormal:
        for image in _images_in(root / name):
            mask = _folder_mask(mask_root, name, image) if mask_root is not None else None
            if mask_root is not None and mask is None:
                raise DatasetError(
                    f"Mask of {image} not found in {mask_root} (looked for {image.stem}.* and "
                    f"{image.stem}_mask.*, also under {name}/); add it, or drop --masks.")
            record = _record(root, image, mask, cls, name, **extra)
            record["anomaly"] = 1  # labelled by its folder, with or without a mask
            records.append(record)
    if not records:
        raise DatasetError(f"{root} holds no image in {', '.join(map(str, folders.values()))}.")
    return {"train": {cls: []}, "test": {cls: sorted(records, key=lambda r: r["img_path"])}}


def _folder_mask(mask_root: Path, abnormal: str, image: Path) -> Path | None:
    for folder in (mask_root / abnormal, mask_root):
        for stem in (image.stem, f"{image.stem}_mask"):
            for candidate in _images_in(folder) if folder.is_dir() else []:
                if candidate.stem == stem:
                    return candidate
    return None
