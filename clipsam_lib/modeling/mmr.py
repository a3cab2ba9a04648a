"""MMR: Multi-level Mask Refinement (method.md section 3).

From the CLIP rough map to the final map, in four steps a figure can show one by one:

1. ``extract_prompts``: upsample the rough map to the original size, binarize at theta,
   8-connected regions, drop small ones, and per region a tight box (optional margin) and
   a foreground point at the map's maximum *inside* the region (a centroid can fall
   outside a ring or a crescent).
2. ``decode_masks``: SAM's prompt encoder + mask decoder on the cached image embedding,
   with ``multimask_output=True``: 3 masks and 3 predicted-IoU scores per prompt, upscaled
   to the original size with ``Sam.postprocess_masks``. Prompts are mapped to SAM's
   1024-frame with ``ResizeLongestSide.apply_coords/apply_boxes``, as ``SamPredictor``
   does. The decoder runs once for all prompts (batched) or once per prompt.
3. ``fuse``: fusion A, B or C of the masks (top ``mask_levels`` by score) with the rough
   map. Pixels outside every mask keep the CLIP score; the output stays in [0, 1].
4. No region: the rough map is returned unchanged.

``refine`` runs all four and returns an :class:`MMRResult` with every intermediate.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy import ndimage
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from clipsam_lib.config import CHOICES, MMRConfig
from clipsam_lib.modeling.sam_backbone import SamEmbedding

PROMPT_MODES = CHOICES["mmr.prompt_mode"]
FUSIONS = CHOICES["mmr.fusion"]

# Measured (bench/mmr.py and 8 smoke images with 108 regions, 2 shared CPU cores): on an
# idle CPU one decoder call per prompt is 10-25% faster than one batched call (the batched
# call repeats the 256x64x64 embedding per prompt); as soon as other processes share the
# cores, per-prompt calls (8x more small parallel regions, each waiting on a descheduled
# thread) become 2.5-3.2x slower than the batched call. Shared cores are the normal case
# here (CI, notebooks beside other work), so batched is the default on CPU too; CUDA
# batches anyway. ``mmr.decoder_batching`` overrides it.
AUTO_BATCHING = {"cpu": "batched", "cuda": "batched"}


# -- 1. prompts -------------------------------------------------------------------------


@dataclass
class Prompts:
    """One prompt per region, in original-image pixels.

    points: ``[N, 2]`` (x, y), label 1 (foreground). boxes: ``[N, 4]`` (x0, y0, x1, y1),
    inclusive pixel indices as SAM's own ``batched_mask_to_box``. areas: region sizes.
    mode: which of them reach SAM (``point``, ``box`` or ``point+box``).
    """

    points: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray
    mode: str = "point+box"

    def __len__(self) -> int:
        return len(self.points)

    @property
    def labels(self) -> np.ndarray:
        return np.ones(len(self), dtype=np.int64)


def resize_map(score_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (half-pixel centres, like torch's ``align_corners=False``) to (h, w)."""
    score_map = np.asarray(score_map, dtype=np.float32)
    if score_map.shape == tuple(size):
        return score_map.copy()
    h, w = size
    return cv2.resize(score_map, (w, h), interpolation=cv2.INTER_LINEAR)


def upsampled_rough(rough_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """M_c: the rough map at the original size, in [0, 1] (what MMR and the MMR-off
    variants start from, and what a stored map is rebuilt from: ``pipeline.read_map``)."""
    return np.clip(resize_map(rough_map, size), 0.0, 1.0)


THRESHOLD_MODES = CHOICES["mmr.threshold_mode"]


def binarize(score_map: np.ndarray, threshold: float, mode: str = "absolute") -> np.ndarray:
    """B = M_c > theta (eq. 7); ``mode="relative"``: B = M_c > theta * max(M_c)."""
    if mode not in THRESHOLD_MODES:
        raise ValueError(f"mmr.threshold_mode {mode!r} is not one of {THRESHOLD_MODES}.")
    if mode == "relative":
        peak = float(score_map.max()) if score_map.size else 0.0
        if peak <= 0.0:  # nothing stands out of a map that is zero everywhere
            return np.zeros(score_map.shape, dtype=bool)
        threshold = threshold * peak
    return score_map > threshold


def extract_prompts(
    score_map: np.ndarray, cfg: MMRConfig
) -> tuple[np.ndarray, Prompts]:
    """Binary map and per-region prompts of a rough map already at the original size."""
    if cfg.prompt_mode not in PROMPT_MODES:
        raise ValueError(f"mmr.prompt_mode {cfg.prompt_mode!r} is not one of {PROMPT_MODES}.")
    binary = binarize(score_map, cfg.threshold, cfg.threshold_mode)
    regions, n = label_regions(binary)
    ids = np.arange(1, n + 1)
    areas = np.bincount(regions.ravel(), minlength=n + 1)[1:]
    keep = ids[areas >= max(cfg.min_area, 1)]
    if len(keep) > cfg.max_regions:  # a map that binarizes into noise: keep the largest
        order = np.argsort(-areas[keep - 1], kind="stable")[: cfg.max_regions]
        keep = np.sort(keep[order])
    if len(keep) == 0:
        empty = np.zeros((0, 2), np.float32)
        return binary, Prompts(empty, np.zeros((0, 4), np.float32), np.zeros(0, np.int64),
                               cfg.prompt_mode)

    slices = ndimage.find_objects(regions)  # tight bounding slices, index = label - 1
    boxes = np.array([region_box(slices[i - 1], cfg.box_margin, score_map.shape)
                      for i in keep], dtype=np.float32)
    points = np.array([_region_peak(score_map, regions, i, slices[i - 1]) for i in keep],
                      dtype=np.float32)
    return binary, Prompts(points, boxes, areas[keep - 1].astype(np.int64), cfg.prompt_mode)


def label_regions(binary: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected regions of a binary map: (label image, count), as MMR sees regions."""
    return ndimage.label(binary, structure=np.ones((3, 3), dtype=bool))


def region_box(
    box: tuple[slice, slice], margin: int, shape: tuple[int, int]
) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), inclusive, widened by ``margin`` and clipped to the image."""
    rows, cols = box
    h, w = shape
    return (max(cols.start - margin, 0), max(rows.start - margin, 0),
            min(cols.stop - 1 + margin, w - 1), min(rows.stop - 1 + margin, h - 1))


def _region_peak(
    score_map: np.ndarray, regions: np.ndarray, region_id: int, box: tuple[slice, slice]
) -> tuple[int, int]:
    """(x, y) of the maximum of M_c over the region's own pixels; ties: first in raster order.

    (``ndimage.maximum_position`` does not define which tied pixel it returns.)
    """
    inside = regions[box] == region_id
    values = np.where(inside, score_map[box], -np.inf)
    row, col = np.unravel_index(int(np.argmax(values)), values.shape)
    return col + box[1].start, row + box[0].start


# -- 2. SAM decoding --------------------------------------------------------------------


def prompts_to_sam_frame(
    prompts: Prompts, original_size: tuple[int, int], image_size: int = 1024
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Points ``[N, 1, 2]`` and boxes ``[N, 4]`` in SAM's resized frame (None if unused)."""
    transform = ResizeLongestSide(image_size)
    coords = boxes = None
    if prompts.mode in ("point", "point+box"):
        coords = transform.apply_coords(prompts.points[:, None, :], original_size)
    if prompts.mode in ("box", "point+box"):
        boxes = transform.apply_boxes(prompts.boxes, original_size)
    return coords, boxes


@torch.no_grad()
def _decode(
    sam: Sam,
    embedding: SamEmbedding,
    coords: torch.Tensor | None,
    boxes: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoder call for B prompts, as ``SamPredictor.predict_torch`` does.

    Returns binary masks ``[B, 3, H, W]`` at the original size and scores ``[B, 3]``.
    """
    points = None
    if coords is not None:
        labels = torch.ones(coords.shape[:2], dtype=torch.int, device=coords.device)
        points = (coords, labels)
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=None)
    low_res, iou = sam.mask_decoder(
        image_embeddings=embedding.embedding.to(sam.device),
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=True,
    )
    masks = sam.postprocess_masks(low_res, embedding.input_size, embedding.original_size)
    return masks > sam.mask_threshold, iou


def resolve_batching(batching: str, device: torch.device | str) -> str:
    """``auto`` -> the faster mode measured for this device type."""
    if batching == "auto":
        return AUTO_BATCHING.get(torch.device(device).type, "batched")
    if batching not in ("batched", "per_prompt"):
        raise ValueError(
            f"mmr.decoder_batching {batching!r} is not 'auto', 'batched' or 'per_prompt'."
        )
    return batching


def decode_masks(
    sam: Sam, embedding: SamEmbedding, prompts: Prompts, batching: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """SAM's 3 masks per prompt, sorted by predicted IoU (level 1 = highest).

    Returns masks ``[N, 3, H, W]`` bool at the original size and scores ``[N, 3]``.
    """
    h, w = embedding.original_size
    if len(prompts) == 0:
        return np.zeros((0, 3, h, w), bool), np.zeros((0, 3), np.float32)
    coords_np, boxes_np = prompts_to_sam_frame(
        prompts, embedding.original_size, sam.image_encoder.img_size
    )

    def as_tensor(array: np.ndarray | None) -> torch.Tensor | None:
        return None if array is None else torch.as_tensor(array, dtype=torch.float,
                                                          device=sam.device)

    coords, boxes = as_tensor(coords_np), as_tensor(boxes_np)
    if resolve_batching(batching, sam.device) == "batched":
        masks, scores = _decode(sam, embedding, coords, boxes)
    else:
        parts = [
            _decode(
                sam,
                embedding,
                None if coords is None else coords[i : i + 1],
                None if boxes is None else boxes[i : i + 1],
            )
            for i in range(len(prompts))
        ]
        masks = torch.cat([p[0] for p in parts])
        scores = torch.cat([p[1] for p in parts])
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    scores = torch.gather(scores, 1, order)
    masks = masks[torch.arange(len(order))[:, None], order]
    return masks.cpu().numpy(), scores.float().cpu().numpy()


# -- 3. fusion --------------------------------------------------------------------------


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def fuse_a(clip_map: np.ndarray, masks: np.ndarray, scores: np.ndarray,
           lam: float) -> np.ndarray:
    """A: M_sam = max_j sum_l softmax(scores_j)_l m_jl; M = (1 - lam) M_c + lam M_sam.

    Applied inside the union of masks; outside it M = M_c.
    """
    weights = _softmax(scores.astype(np.float64), axis=1).astype(np.float32)  # [N, L]
    m_sam = np.einsum("nl,nlhw->nhw", weights, masks.astype(np.float32)).max(axis=0)
    inside = masks.any(axis=(0, 1))
    return np.where(inside, (1.0 - lam) * clip_map + lam * m_sam, clip_map)


def _normalized_sum(clip_map: np.ndarray, added: np.ndarray) -> np.ndarray:
    """(M_c + s) / (1 + s): divided by the largest value M_c + s can reach (M_c <= 1).

    s = 0 (outside every mask) leaves M_c unchanged; s > 0 moves M_c towards 1.
    """
    return (clip_map + added) / (1.0 + added)


def fuse_b(clip_map: np.ndarray, masks: np.ndarray,
           level_weights: tuple[float, ...]) -> np.ndarray:
    """B, progressive by level: U_l = union_j m_jl; M = (M_c + sum_l w_l U_l) / (1 + same)."""
    n_levels = masks.shape[1]
    if len(level_weights) < n_levels:
        raise ValueError(
            f"mmr.level_weights {tuple(level_weights)} has fewer than {n_levels} levels."
        )
    unions = masks.any(axis=0).astype(np.float32)  # [L, H, W]
    added = np.einsum("l,lhw->hw", np.asarray(level_weights[:n_levels], np.float32), unions)
    return _normalized_sum(clip_map, added)


def fuse_c(clip_map: np.ndarray, masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """C, score-weighted: M = (M_c + sum_jl s_jl m_jl) / (1 + same), s clipped to [0, 1].

    SAM's scores are predicted IoUs (trained towards [0, 1]); an untrained decoder can
    return negatives, which would otherwise push M below 0.
    """
    weights = np.clip(scores, 0.0, 1.0).astype(np.float32)
    added = np.einsum("nl,nlhw->hw", weights, masks.astype(np.float32))
    return _normalized_sum(clip_map, added)


def fuse(clip_map: np.ndarray, masks: np.ndarray, scores: np.ndarray,
         cfg: MMRConfig) -> np.ndarray:
    """Final map in [0, 1] from the rough map and the top ``cfg.mask_levels`` masks.

    ``masks`` ``[N, 3, H, W]`` and ``scores`` ``[N, 3]`` sorted by score (``decode_masks``).
    """
    if cfg.fusion not in FUSIONS:
        raise ValueError(f"mmr.fusion {cfg.fusion!r} is not one of {FUSIONS}.")
    if cfg.mask_levels not in (1, 2, 3):
        raise ValueError(f"mmr.mask_levels must be 1, 2 or 3, got {cfg.mask_levels}.")
    clip_map = np.clip(clip_map.astype(np.float32), 0.0, 1.0)
    if len(masks) == 0:
        return clip_map
    masks, scores = masks[:, : cfg.mask_levels], scores[:, : cfg.mask_levels]
    if cfg.fusion == "A":
        fused = fuse_a(clip_map, masks, scores, cfg.fusion_lambda)
    elif cfg.fusion == "B":
        fused = fuse_b(clip_map, masks, cfg.level_weights)
    else:
        fused = fuse_c(clip_map, masks, scores)
    return np.clip(fused, 0.0, 1.0).astype(np.float32)


# -- all steps --------------------------------------------------------------------------


@dataclass
class MMRResult:
    """Every step of MMR for one image, at the original size.

    clip_map: the rough map upsampled (float32). binary: ``binarize(clip_map)``.
    masks ``[N, 3, H, W]`` / scores ``[N, 3]``: SAM's output sorted by score.
    final_map: the fused map in [0, 1] (``clip_map`` when there is no region).
    """

    clip_map: np.ndarray
    binary: np.ndarray
    prompts: Prompts
    masks: np.ndarray
    scores: np.ndarray
    final_map: np.ndarray


def refine(sam: Sam, embedding: SamEmbedding, rough_map: np.ndarray,
           cfg: MMRConfig) -> MMRResult:
    """Run MMR on one image: rough map (any size) + cached SAM embedding -> final map."""
    clip_map = upsampled_rough(rough_map, embedding.original_size)
    binary, prompts = extract_prompts(clip_map, cfg)
    masks, scores = decode_masks(sam, embedding, prompts, cfg.decoder_batching)
    final = fuse(clip_map, masks, scores, cfg)
    return MMRResult(clip_map, binary, prompts, masks, scores, final)
