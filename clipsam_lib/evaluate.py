"""Evaluation protocols of ../spec/evaluation.md: "peer" and "mvtec", per class, pooled.

- "peer" (APRIL-GAN's test.py, the paper's tables): masks binarized ``> mask_threshold``
  on the raw stored values, resized to S x S bilinearly (PIL, as torchvision does on PIL
  images) and thresholded at 0.5; maps resized to S x S; metrics on all pixels of all
  test images of a class (normal images included); unweighted mean over classes.
- "mvtec" (official MVTec AD evaluation): maps resized to each image's original size,
  masks at the original size, PRO variant "mvtec".

Maps are never normalized per image (that changes the ranking across images). Optional
Gaussian smoothing (``EvalConfig.sigma``, in pixels at the working resolution S, the
AnomalyCLIP convention) happens after resizing; at the original size sigma is scaled by
``original / S`` per axis so it blurs the same part of the image.

Values in the returned tables are fractions in [0, 1]; tables multiply by 100.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tifffile
from PIL import Image
from scipy import ndimage

from clipsam_lib.config import CHOICES, EvalConfig
from clipsam_lib.data.io import check_mask_matches, read_mask
from clipsam_lib.io_utils import atomic_path
from clipsam_lib.metrics import image_metrics, segmentation_metrics

Record = dict[str, Any]
GetMap = Callable[[Record], Any]

PROTOCOLS = CHOICES["eval.protocol"]
IMAGE_SCORES = CHOICES["eval.image_score"]
METRIC_COLUMNS = (
    "pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_pro", "pixel_pro_linear200",
    "pixel_pro_mvtec", "image_auroc", "image_ap", "image_f1_max",
)
PROTOCOL_COLUMNS = (
    "protocol", "resolution", "sigma", "pro_variant", "mask_threshold", "fpr_limit",
    "image_score",
)


# --------------------------------------------------------------------------- resizing


def resize_map(amap: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a float map to ``height x width`` (PIL "F" mode, float32)."""
    amap = np.asarray(amap, dtype=np.float32)
    if amap.shape == (height, width):
        return amap
    resized = Image.fromarray(amap).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def resize_mask_peer(mask: np.ndarray, size: int) -> np.ndarray:
    """The peers' mask resize: 0/255 image, bilinear to ``size x size``, then > 0.5.

    torchvision's Resize on a PIL image is PIL's bilinear resize; ToTensor divides by
    255, so ``> 0.5`` is ``> 127`` on the uint8 values.
    """
    if mask.shape == (size, size):
        return mask.astype(bool, copy=False)
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR)) > 127


def smooth(amap: np.ndarray, sigma: float, image_size: int) -> np.ndarray:
    """Gaussian smoothing with ``sigma`` given in pixels at the working resolution."""
    if sigma <= 0:
        return amap
    scale = (amap.shape[0] / image_size, amap.shape[1] / image_size)
    return ndimage.gaussian_filter(amap, sigma=(sigma * scale[0], sigma * scale[1]))


# --------------------------------------------------------------------------- per-image inputs


def _map_array(rec: Record, get_map: GetMap) -> np.ndarray:
    """``get_map(rec)`` as a 2-D float32 array (a torch tensor or a 1 x H x W map is fine)."""
    raw = get_map(rec)
    if hasattr(raw, "detach"):  # torch tensor
        raw = raw.detach().float().cpu().numpy()
    amap = np.squeeze(np.asarray(raw, dtype=np.float32))
    if amap.ndim != 2:
        raise ValueError(
            f"get_map returned shape {np.shape(raw)} for {rec['img_path']}; it must return "
            "one H x W anomaly map per image."
        )
    return amap


def protocol_map(rec: Record, get_map: GetMap, cfg: EvalConfig, image_size: int) -> np.ndarray:
    """The map the protocol evaluates: resized (S x S or original size), then smoothed."""
    amap = _map_array(rec, get_map)
    if cfg.protocol == "peer":
        height = width = image_size
    else:
        height, width = int(rec["height"]), int(rec["width"])
    return smooth(resize_map(amap, height, width), cfg.sigma, image_size)


def protocol_mask(
    rec: Record, dataset_root: Path, cfg: EvalConfig, image_size: int
) -> np.ndarray:
    """The ground truth the protocol evaluates (bool); all False for a normal image."""
    mask = ground_truth(rec, dataset_root, cfg)
    return resize_mask_peer(mask, image_size) if cfg.protocol == "peer" else mask


def ground_truth(rec: Record, dataset_root: Path, cfg: EvalConfig) -> np.ndarray:
    """The record's mask at the image's original size, binarized as ``cfg`` says (bool;
    all False for a normal image). A mask of another size than its image is an error."""
    height, width = int(rec["height"]), int(rec["width"])
    if rec.get("mask_path"):
        path = dataset_root / rec["mask_path"]
        mask = read_mask(path, cfg.mask_threshold, cfg.mask_binarization)  # bad -> DatasetError
        check_mask_matches((height, width), mask, path)
    elif rec.get("anomaly") and not rec.get("mask_free"):
        raise ValueError(
            f"{rec['img_path']} is labelled anomalous but has no mask_path; rebuild the "
            "dataset index (`clipsam index`) or drop the record."
        )
    else:
        mask = np.zeros((height, width), dtype=bool)
    return mask


def _check_config(cfg: EvalConfig, records: Sequence[Record]) -> None:
    if cfg.protocol not in PROTOCOLS:
        raise ValueError(f"EvalConfig.protocol must be one of {PROTOCOLS}, got {cfg.protocol!r}.")
    if cfg.image_score not in IMAGE_SCORES:
        raise ValueError(
            f"eval.image_score must be one of {IMAGE_SCORES}, got {cfg.image_score!r}."
        )
    if cfg.pro_variant not in ("linear200", "mvtec"):
        raise ValueError(
            f"EvalConfig.pro_variant must be 'linear200' or 'mvtec', got {cfg.pro_variant!r}."
        )
    for rec in records:
        recorded = rec.get("mask_threshold")
        if recorded is not None and float(recorded) != float(cfg.mask_threshold):
            raise ValueError(
                f"{rec['img_path']} was labelled with mask threshold {recorded} but the "
                f"evaluation uses {cfg.mask_threshold}; set eval.mask_threshold={recorded} "
                "or rebuild the index with the same threshold."
            )


# --------------------------------------------------------------------------- evaluation


def evaluate_maps(
    records: Iterable[Record],
    dataset_root: str | Path,
    get_map: GetMap,
    eval_cfg: EvalConfig,
    image_size: int,
    dataset: str,
    *,
    clip_scores: Callable[[Record], float] | None = None,
    extra_columns: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Evaluate anomaly maps class by class under ``eval_cfg.protocol``.

    Args:
        records: dataset records (``img_path``, ``mask_path`` ("" for normal), ``cls_name``,
            ``specie_name``, ``anomaly``, ``width``, ``height``; paths relative to
            ``dataset_root``). All given records are evaluated; subset them beforehand with
            ``data.records(..., max_per_class=...)``.
        get_map: ``rec -> H x W`` anomaly map of any size (the protocol resizes).
        eval_cfg: protocol, sigma, PRO variant, mask threshold, FPR limit.
        image_size: the working resolution S.
        dataset: dataset name written into each row.
        clip_scores: ``rec -> float``, the CLIP global image score
            (``features.clip_global_scores``); needed when ``eval_cfg.image_score`` uses it.
        extra_columns: constant columns appended to every row (e.g. provenance columns).

    Returns:
        One row per class (in order of first appearance): ``dataset, cls_name, n_images,
        n_anomalous``, the metrics (fractions in [0, 1]; ``pixel_pro`` is the configured
        variant, forced to "mvtec" under the mvtec protocol), the protocol columns and
        ``note`` (why a value is NaN, else "").
    """
    records = list(records)
    _check_config(eval_cfg, records)
    if "clip_global" in eval_cfg.image_score and clip_scores is None:
        raise ValueError(
            f"eval.image_score {eval_cfg.image_score!r} needs the CLIP global scores: pass "
            "clip_scores (features.clip_global_scores) or set eval.image_score: map_max."
        )
    root = Path(dataset_root)
    by_class: dict[str, list[Record]] = {}
    for rec in records:
        by_class.setdefault(rec["cls_name"], []).append(rec)
    rows = [
        _evaluate_class(cls, recs, root, get_map, eval_cfg, image_size, clip_scores)
        for cls, recs in by_class.items()
    ]
    table = pd.DataFrame(rows)
    table.insert(0, "dataset", dataset)
    for key, value in (extra_columns or {}).items():
        table[key] = value
    return table


def _evaluate_class(
    cls: str,
    recs: list[Record],
    root: Path,
    get_map: GetMap,
    cfg: EvalConfig,
    image_size: int,
    clip_scores: Callable[[Record], float] | None,
) -> dict[str, Any]:
    maps, masks = [], []
    for rec in recs:
        maps.append(protocol_map(rec, get_map, cfg, image_size))
        masks.append(protocol_mask(rec, root, cfg, image_size))
    labels = np.array([int(bool(rec["anomaly"])) for rec in recs])
    clip = None if clip_scores is None else np.array([float(clip_scores(r)) for r in recs])
    scores = image_scores(cfg.image_score, np.array([m.max() for m in maps], float), clip)

    mask_free = any(rec.get("mask_free") for rec in recs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pixel = (dict.fromkeys(("auroc", "ap", "f1_max", "pro_linear200", "pro_mvtec"),
                               float("nan")) if mask_free else
                 segmentation_metrics(masks, maps, pro_variant="both", fpr_limit=cfg.fpr_limit))
    image = image_metrics(labels, np.array(scores))
    variant = "mvtec" if cfg.protocol == "mvtec" else cfg.pro_variant
    row = {
        "cls_name": cls,
        "n_images": len(recs),
        "n_anomalous": int(labels.sum()),
        "pixel_auroc": pixel["auroc"],
        "pixel_ap": pixel["ap"],
        "pixel_f1_max": pixel["f1_max"],
        "pixel_pro": pixel[f"pro_{variant}"],
        "pixel_pro_linear200": pixel["pro_linear200"],
        "pixel_pro_mvtec": pixel["pro_mvtec"],
        "image_auroc": image["auroc"],
        "image_ap": image["ap"],
        "image_f1_max": image["f1_max"],
        "protocol": cfg.protocol,
        "resolution": f"{image_size}x{image_size}" if cfg.protocol == "peer" else "original",
        "sigma": float(cfg.sigma),
        "pro_variant": variant,
        "mask_threshold": float(cfg.mask_threshold),
        "fpr_limit": float(cfg.fpr_limit),
        "image_score": cfg.image_score,
    }
    if mask_free:
        no_masks = "pixel metrics NaN: the dataset has no masks (image-level metrics only)"
        row["note"] = "; ".join([no_masks, *_image_notes(labels)])
    else:
        row["note"] = _nan_note(row, masks, labels, [str(w.message) for w in caught])
    if row["note"]:
        warnings.warn(f"class {cls}: {row['note']}", stacklevel=3)
    return row


def image_scores(kind: str, map_max: np.ndarray, clip: np.ndarray | None) -> np.ndarray:
    """One class's image scores under ``eval.image_score`` (see EvalConfig).

    "clip_global+map_max" is APRIL-GAN's few-shot combination: the map maxima are min-max
    normalised over the class's images (a constant set becomes 0) and averaged with CLIP's.
    """
    if kind == "map_max":
        return map_max
    if clip is None:
        raise ValueError(f"eval.image_score {kind!r} needs the CLIP global scores.")
    if kind == "clip_global":
        return clip
    spread = map_max.max() - map_max.min()
    normalised = (map_max - map_max.min()) / spread if spread > 0 else np.zeros_like(map_max)
    return 0.5 * (clip + normalised)


def _nan_note(
    row: dict[str, Any], masks: list[np.ndarray], labels: np.ndarray, caught: list[str]
) -> str:
    """Why each NaN metric of the row is NaN, '; '-separated ('' when none is)."""
    n_pos = sum(int(m.sum()) for m in masks)
    n_neg = sum(m.size for m in masks) - n_pos
    reasons = []
    if n_pos == 0:
        reasons.append("pixel metrics NaN: no anomalous pixel in the class")
    elif n_neg == 0:
        reasons.append("pixel AUROC/PRO NaN: no normal pixel in the class")
    elif np.isnan(row["pixel_pro_linear200"]):
        detail = next((m for m in caught if "linear200" in m), "undefined")
        reasons.append(f"pixel_pro_linear200 NaN: {detail}")
    return "; ".join(reasons + _image_notes(labels))


def _image_notes(labels: np.ndarray) -> list[str]:
    if not labels.any():
        return ["image metrics NaN: no anomalous image"]
    if labels.all():
        return ["image AUROC NaN: no normal image"]
    return []


def macro_mean(table: pd.DataFrame) -> pd.DataFrame:
    """Unweighted mean over classes, one row per dataset (``cls_name`` = "mean").

    NaN values of a class are left out of that metric's mean, and ``note`` names the
    classes left out. Other columns (protocol settings, provenance) are carried over; rows
    that mix evaluation settings are a ValueError (average each setting separately).
    """
    rows = [_mean_row(dataset, group) for dataset, group in table.groupby("dataset", sort=False)]
    return pd.DataFrame(rows, columns=table.columns)


def _mean_row(dataset: str, group: pd.DataFrame) -> dict[str, Any]:
    settings = group[list(PROTOCOL_COLUMNS)].drop_duplicates()
    if len(settings) > 1:
        raise ValueError(
            f"dataset {dataset}: the rows mix evaluation settings "
            f"({settings.to_dict('records')}); average each setting separately."
        )
    row: dict[str, Any] = {}
    for column in group.columns:  # settings, provenance: kept when constant
        values = group[column].drop_duplicates()
        row[column] = values.iloc[0] if len(values) == 1 else ""
    row.update(
        cls_name="mean", n_images=int(group["n_images"].sum()),
        n_anomalous=int(group["n_anomalous"].sum()),
    )
    notes = []
    for column in METRIC_COLUMNS:
        values = group[column].astype(float)
        row[column] = float(values.mean()) if values.notna().any() else float("nan")
        left_out = group.loc[values.isna(), "cls_name"].tolist()
        if left_out:
            notes.append(
                f"{column}: mean of {len(group) - len(left_out)}/{len(group)} classes, "
                f"NaN left out: {', '.join(left_out)}"
            )
    row["note"] = "; ".join(notes)
    if notes:
        warnings.warn(f"macro mean of {dataset}: {row['note']}", stacklevel=3)
    return row


# --------------------------------------------------------------------------- TIFF export


def mvtec_tiff_path(out_dir: str | Path, rec: Record) -> Path:
    """``<out_dir>/<cls>/test/<defect or good>/<image stem>.tiff`` (official script layout)."""
    img = Path(rec["img_path"])
    if rec.get("anomaly"):
        defect = rec.get("specie_name") or img.parent.name
    else:
        defect = "good"
    return Path(out_dir) / rec["cls_name"] / "test" / defect / f"{img.stem}.tiff"


def export_mvtec_tiffs(
    records: Iterable[Record],
    get_map: GetMap,
    out_dir: str | Path,
    *,
    sigma: float = 0.0,
    image_size: int = 518,
) -> list[Path]:
    """Write each map as a float32 TIFF at the image's original size, atomically.

    The layout is the one the official MVTec AD ``evaluate_experiment.py`` reads
    (``--anomaly_maps_dir out_dir``). ``sigma`` (pixels at ``image_size``) smooths the
    maps as the "mvtec" protocol does. Returns the written paths.
    """
    cfg = EvalConfig(protocol="mvtec", sigma=sigma)
    written = []
    for rec in records:
        amap = protocol_map(rec, get_map, cfg, image_size).astype(np.float32, copy=False)
        path = mvtec_tiff_path(out_dir, rec)
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, amap)
        written.append(path)
    return written
