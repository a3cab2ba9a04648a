"""How well SAM segments a defect when it is given the defect's own box.

MMR can only be as good as SAM's answer to a good prompt: prompted with the
ground-truth box of each defect region (each connected component of a test mask),
the top-scoring of SAM's three masks should cover that region. ``box_prompt_ious``
measures it for any SAM the profile names (the mini SAM: issue target median >= 0.6;
random init: ~0), from the cached image embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import ndimage
from segment_anything.utils.transforms import ResizeLongestSide

from clipsam_lib.evaluate import ground_truth
from clipsam_lib.features import (
    ClipFeatureStore,
    cached_embedding,
    extract_sam_embeddings,
)
from clipsam_lib.modeling.mmr import Prompts, decode_masks, label_regions, region_box
from clipsam_lib.workspace import Workspace

MIN_REGION_AREA = 16  # pixels; smaller components are specks no prompt is drawn for
UNNAMED_DEFECT = "(unnamed)"  # the defect type of a region whose layout names none (VisA)
# Thresholds on a region's area share per low-res cell (grid_ceiling_iou): a thin line
# covers under half of each cell it crosses, so 0.5 alone would drop it.
CEILING_THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6)


def region_boxes(mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(region mask, inclusive XYXY box) per region of ``mask``, as MMR finds regions."""
    labels, _ = label_regions(mask)
    regions = []
    for k, found in enumerate(ndimage.find_objects(labels), start=1):
        region = labels == k
        if found is None or region.sum() < MIN_REGION_AREA:
            continue
        regions.append((region, np.array(region_box(found, 0, mask.shape), np.float32)))
    return regions


def gt_box_prompts(mask: np.ndarray) -> tuple[list[np.ndarray], Prompts]:
    """Each defect region of ``mask`` and a box prompt per region (points are not sent)."""
    regions = region_boxes(mask)
    boxes = (np.stack([box for _, box in regions]) if regions
             else np.zeros((0, 4), np.float32))
    return [region for region, _ in regions], box_prompts([r for r, _ in regions], boxes)


def box_prompts(regions: list[np.ndarray], boxes: np.ndarray) -> Prompts:
    """Box-only prompts (``[N, 4]`` XYXY), one per region (points are not sent)."""
    areas = np.array([region.sum() for region in regions], dtype=np.int64)
    return Prompts(boxes[:, :2].copy(), boxes, areas, mode="box")


@dataclass
class BoxPromptResult:
    """SAM's answer to an image's ground-truth boxes, as ``figures.mmr_steps_figure`` draws
    it: binary = the ground truth, masks ``[N, 3, H, W]`` / scores ``[N, 3]`` sorted by
    score, ious ``[N, 3]`` of each mask with its region (``regions``, one per prompt)."""

    binary: np.ndarray
    regions: list[np.ndarray]
    prompts: Prompts
    masks: np.ndarray
    scores: np.ndarray
    ious: np.ndarray


def _box_prompt_results(ws: Workspace, dataset: str, records: list[dict[str, Any]]):
    """(record, BoxPromptResult) per record with at least one defect region."""
    profile = ws.profile
    root = ws.dataset(dataset).root
    records = [r for r in records if r.get("mask_path")]
    # The embeddings MMR uses, from the cache (computed only for images it lacks); images
    # are known by the CLIP store's manifest, so a warm pass decodes none.
    cache = extract_sam_embeddings(profile, dataset, records, progress=False, backbone=ws.sam)
    store = ClipFeatureStore(profile)
    sam = ws.sam.get().model
    for rec in records:
        mask = ground_truth(rec, root, profile.eval)
        regions, prompts = gt_box_prompts(mask)
        if not regions:
            continue
        embedding = cached_embedding(cache, store.image_key(dataset, rec))
        masks, scores = decode_masks(sam, embedding, prompts)  # sorted by SAM's score
        ious = np.array([[mask_iou(region, m) for m in three]
                         for region, three in zip(regions, masks)])
        yield rec, BoxPromptResult(mask, regions, prompts, masks, scores, ious)


def box_prompt_ious(ws: Workspace, dataset: str,
                    records: list[dict[str, Any]] | None = None) -> pd.DataFrame:
    """One row per defect region: image, class, area, IoU of SAM's top mask for its box,
    of the best of its three masks, what SAM's mask grid allows (``grid_ceiling_iou``),
    and the top mask's area (pixels: above the region's when SAM paints past it)."""
    records = records if records is not None else ws.dataset(dataset).records()
    sam = ws.sam.get().model
    rows = []
    for rec, result in _box_prompt_results(ws, dataset, records):
        for region, area, ious, masks in zip(result.regions, result.prompts.areas,
                                             result.ious, result.masks):
            rows.append({"dataset": dataset, "cls_name": rec["cls_name"],
                         "defect": rec.get("specie_name") or UNNAMED_DEFECT,
                         "img_path": rec["img_path"], "area": int(area),
                         "iou": float(ious[0]), "best_of_3_iou": float(ious.max()),
                         "grid_ceiling_iou": grid_ceiling_iou(region, sam),
                         "mask_area": int(masks[0].sum())})
    return pd.DataFrame(rows)


@torch.no_grad()
def grid_ceiling_iou(region: np.ndarray, sam) -> float:
    """What SAM's mask grid allows for ``region``: the IoU after a round trip through it.

    SAM draws masks on a low-resolution grid (4x its image embedding: 96 x 96 for the mini
    SAM, 256 x 256 for ViT-H) and upsamples them (``Sam.postprocess_masks``). Here the
    region's own area share per grid cell stands in for SAM's mask logits, at the best of
    ``CEILING_THRESHOLDS``: a lower bound of the best IoU any SAM of that size could reach,
    so a top-mask IoU far below it is the model's, not the grid's.
    """
    size = sam.image_encoder.img_size
    grid = 4 * sam.prompt_encoder.image_embedding_size[0]
    input_size = ResizeLongestSide.get_preprocess_shape(*region.shape, size)
    resized = F.interpolate(torch.from_numpy(region.astype(np.float32))[None, None],
                            input_size, mode="bilinear", align_corners=False)
    padded = F.pad(resized, (0, size - input_size[1], 0, size - input_size[0]))
    share = F.adaptive_avg_pool2d(padded, grid).to(sam.device)
    best = 0.0
    for threshold in CEILING_THRESHOLDS:
        logits = (share - threshold) * 50  # steep: the upsampled sign is what counts
        mask = sam.postprocess_masks(logits, input_size, region.shape)[0, 0] > 0
        best = max(best, mask_iou(region, mask.cpu().numpy()))
    return best


def box_prompt_samples(ws: Workspace, dataset: str, records: list[dict[str, Any]]) -> list:
    """``figures.FigureSample`` rows of SAM's masks for each record's ground-truth boxes."""
    from clipsam_lib.data.io import read_image_rgb
    from clipsam_lib.figures import FigureSample

    root = ws.dataset(dataset).root
    return [FigureSample(read_image_rgb(root / rec["img_path"]), result.binary, result,
                         f"{rec['cls_name']}/{rec.get('specie_name') or 'defect'}\n"
                         f"top-mask IoU " + ", ".join(f"{i:.2f}" for i in result.ious[:, 0]))
            for rec, result in _box_prompt_results(ws, dataset, records)]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (0 when both are empty)."""
    return float(np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1))


def box_iou_summary(ious: pd.DataFrame, by: tuple[str, ...] = ("dataset",)) -> pd.DataFrame:
    """Per group: regions, median and mean IoU of the top-scoring mask, share of regions
    with IoU >= 0.5, the median IoU of the best of SAM's three masks (what a perfect
    score ranking would give: the gap to ``median_iou`` is the IoU head's), the
    median of what SAM's mask grid allows (``grid_ceiling_iou``) and the median of the
    top mask's area over its region's (``median_area_ratio``: far above 1 where SAM paints
    a blob over a thin region, as the mini SAM does over the benchmark's scratches)."""
    rows = []
    for keys, group in ious.groupby(list(by), sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        rows.append({**dict(zip(by, keys)), "regions": len(group),
                     "median_iou": float(group["iou"].median()),
                     "mean_iou": float(group["iou"].mean()),
                     "share_iou_ge_0.5": float((group["iou"] >= 0.5).mean()),
                     "median_best_of_3": float(group["best_of_3_iou"].median()),
                     "median_grid_ceiling": float(group["grid_ceiling_iou"].median()),
                     "median_area_ratio": float((group["mask_area"] / group["area"]).median())})
    return pd.DataFrame(rows)


def box_iou_table(ws: Workspace, name: str = "sam_gt_box_iou") -> pd.DataFrame:
    """The summary for every test set of the profile's directions, written as a table
    (``name``) with a second one per defect type (``<name>_by_defect``)."""
    from clipsam_lib import paths
    from clipsam_lib.provenance import provenance_columns
    from clipsam_lib.tables import write_table

    profile = ws.profile
    tests = list(dict.fromkeys(t for d in profile.directions for t in d.test))
    ious = pd.concat([box_prompt_ious(ws, t) for t in tests])
    shown = ["regions", "median_iou", "mean_iou", "share_iou_ge_0.5", "median_best_of_3",
             "median_grid_ceiling", "median_area_ratio"]
    caption = (f"SAM prompted with each defect region's ground-truth box: IoU of its "
               f"top-scoring mask (profile {profile.name})")
    tables = {}
    for suffix, by in (("", ("dataset",)), ("_by_defect", ("dataset", "defect"))):
        summary = box_iou_summary(ious, by)
        for column, value in provenance_columns(profile).items():
            summary[column] = value
        summary["dataset_index_hash"] = [ws.dataset(d).index_hash for d in summary["dataset"]]
        write_table(summary, paths.results_subdir(profile, "tables") / f"{name}{suffix}",
                    caption=caption + (", per defect type" if suffix else ""),
                    display_columns=[*by, *shown], floatfmt=".3f")
        tables[suffix] = summary
    return tables[""]
