"""End-to-end ClipSAM: CLIP + UMCI rough map, then MMR with SAM (method.md, at a glance).

Two entry points, both on the same per-image step (``final_map_of``):

- :class:`ClipSAMPredictor`, modelled on segment-anything's ``SamPredictor``: the
  expensive backbone work (CLIP stage tokens, SAM image embedding) is done once in
  ``set_image`` (through the feature caches when enabled), then ``predict(class_name)``
  runs only UMCI and SAM's decoder.
- :func:`run_dataset`: final maps for a list of records, one ``.npz`` per image (the
  rough map and what MMR changed, rebuilt exactly at the original resolution by
  :func:`read_map`), in a folder keyed by exactly what determines a map
  (:func:`map_key`), so ablation variants never mix, an interrupted run resumes and a
  change of evaluation settings recomputes nothing. Backbone features come from the
  caches; per variant only UMCI and SAM's decoder run.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from clipsam_lib import paths
from clipsam_lib.cleanup import mark_used
from clipsam_lib.config import MMRConfig, ProfileConfig
from clipsam_lib.data.fingerprint import records_fingerprint
from clipsam_lib.errors import UserError
from clipsam_lib.features import (
    ClipFeatureStore,
    SamEmbeddingReader,
    cache_clip_images,
    cached_embedding,
    extract_clip_features,
    extract_sam_embeddings,
    global_score,
    image_hash,
    sam_cache,
)
from clipsam_lib.io_utils import atomic_path, write_json_atomic
from clipsam_lib.modeling.mmr import MMRResult, Prompts, refine, upsampled_rough
from clipsam_lib.modeling.sam_backbone import SamBackbone, SamEmbedding
from clipsam_lib.modeling.umci import UMCI
from clipsam_lib.workspace import Workspace, as_workspace

Record = dict[str, Any]


# -- the shared per-image step -----------------------------------------------------------


def _as_umci(umci: UMCI | str | Path, device: Any) -> UMCI:
    if isinstance(umci, (str, Path)):
        from clipsam_lib.train import load_umci

        umci = load_umci(umci)
    return umci.to(device).eval()


def without_refinement(rough_map: np.ndarray, size: tuple[int, int]) -> MMRResult:
    """The MMR-off result: the rough map at the original size, no prompts, no masks."""
    clip_map = upsampled_rough(rough_map, size)
    h, w = size
    empty = Prompts(np.zeros((0, 2), np.float32), np.zeros((0, 4), np.float32),
                    np.zeros(0, np.int64))
    return MMRResult(clip_map, np.zeros(size, bool), empty, np.zeros((0, 3, h, w), bool),
                     np.zeros((0, 3), np.float32), clip_map)


def final_map_of(
    rough_map: np.ndarray,
    mmr_cfg: MMRConfig,
    original_size: tuple[int, int],
    sam: torch.nn.Module | None = None,
    embedding: SamEmbedding | None = None,
) -> MMRResult:
    """Rough map -> every MMR step (or the upsampled rough map when MMR is off)."""
    if not mmr_cfg.enabled:
        return without_refinement(rough_map, original_size)
    if sam is None or embedding is None:
        raise ValueError("MMR is enabled: pass SAM and the image's SAM embedding.")
    return refine(sam, embedding, rough_map, mmr_cfg)


# -- predictor ---------------------------------------------------------------------------


@dataclass
class ClipSAMPrediction(MMRResult):
    """What ClipSAM made of one image: MMR's steps at the original size (``MMRResult``:
    clip_map, binary, prompts, masks, scores, final_map in [0, 1]), plus the class and
    UMCI's rough map (S x S in [0, 1])."""

    class_name: str
    rough_map: np.ndarray
    clip_score: float  # softmax(100 cos(global image embedding, text))[anomalous]


class ClipSAMPredictor:
    """ClipSAM for one image at a time: ``set_image`` once, then ``predict`` per class.

    Arguments:
      workspace: the run's workspace (or a bare profile: a workspace of its own); its
        profile gives the backbones, UMCI and MMR switches and the device, and its
        backbones are shared with every other stage of the run.
      umci: a trained UMCI or the path of a ``train_umci`` checkpoint.
      use_cache: read/write backbone outputs through the profile's feature caches, so an
        image seen before (e.g. during extraction) never runs a backbone again.

    Backbones are built on first need: with everything cached, CLIP is never built and
    SAM only for its decoder.
    """

    def __init__(self, workspace: Workspace | ProfileConfig, umci: UMCI | str | Path, *,
                 use_cache: bool = True):
        self.workspace = as_workspace(workspace)
        self.profile = self.workspace.profile
        self.device = self.workspace.device
        self.umci = _as_umci(umci, self.device)
        self.use_cache = use_cache
        self.clip_store = ClipFeatureStore(self.profile) if use_cache else None
        self.reset_image()

    # -- the workspace's backbones, built on first use ---------------------------------
    @property
    def clip(self) -> Any:
        return self.workspace.clip.get()

    @property
    def sam(self) -> SamBackbone:
        return self.workspace.sam.get()

    # -- image ------------------------------------------------------------------------
    def reset_image(self) -> None:
        self.tokens: list[torch.Tensor] | None = None
        self.global_embedding: torch.Tensor | None = None
        self.embedding: SamEmbedding | None = None
        self.original_size: tuple[int, int] | None = None

    def set_image(self, image_rgb: np.ndarray) -> None:
        """Run (or read from the cache) the backbones for an RGB uint8 H x W x 3 image."""
        if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
            raise ValueError(
                f"Expected an RGB uint8 H x W x 3 image, got {image_rgb.dtype} "
                f"{tuple(image_rgb.shape)}."
            )
        self.reset_image()
        self.original_size = tuple(image_rgb.shape[:2])
        self.tokens, self.global_embedding = self._clip_features(image_rgb)
        if self.profile.mmr.enabled:
            self.embedding = self._sam_embedding(image_rgb)

    def _clip_features(self, image_rgb: np.ndarray) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Stage tokens and the global image embedding, from the cache when enabled."""
        if self.clip_store is None:
            stages, global_embedding = self.clip.encode_images(
                self.clip.preprocess(image_rgb)[None])
            return [t[0] for t in stages], global_embedding[0]
        key = image_hash(image_rgb)
        if not self.clip_store.has_image(key):
            cache_clip_images(self.profile, [image_rgb], backbone=self.workspace.clip)
        return self.clip_store.tokens_for_key(key), self.clip_store.global_for_key(key)

    def _sam_embedding(self, image_rgb: np.ndarray) -> SamEmbedding:
        if not self.use_cache:
            return self.sam.embed(image_rgb)
        reader = SamEmbeddingReader(self.profile)
        return cached_embedding(reader.cache, image_rgb, self.workspace.sam)

    def _text(self, class_name: str) -> torch.Tensor:
        store = self.clip_store
        if store is not None and store.has_text(class_name):
            return store.text([class_name])[0]
        text = self.clip.text_features([class_name])[0]
        if store is None:
            return text
        store.cache.put(store.text_key(class_name), {"text": text})
        return store.text([class_name])[0]  # as stored: warm and cold cache agree

    # -- prediction ---------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, image_or_class: np.ndarray | str,
                class_name: str | None = None) -> ClipSAMPrediction:
        """``predict(class_name)`` after ``set_image``, or ``predict(image, class_name)``.

        ``class_name`` is the dataset's class folder name (e.g. ``metal_nut``).
        """
        if class_name is None:
            class_name = str(image_or_class)
        else:
            self.set_image(np.asarray(image_or_class))
        if self.tokens is None:
            raise RuntimeError("Set an image with set_image(...) before predict(class_name).")
        tokens = [t[None].to(self.device) for t in self.tokens]
        text = self._text(class_name)[None].to(self.device)
        rough = self.umci(tokens, text, self.profile.clip.image_size).rough_map[0]
        rough = rough.float().cpu().numpy()
        sam = self.sam.model if self.profile.mmr.enabled else None
        steps = final_map_of(rough, self.profile.mmr, self.original_size, sam, self.embedding)
        clip_score = global_score(self.global_embedding, text[0].cpu())
        return ClipSAMPrediction(**vars(steps), class_name=class_name, rough_map=rough,
                                 clip_score=clip_score)


# -- rough maps -----------------------------------------------------------------------------


def rough_maps(
    profile: ProfileConfig,
    umci: UMCI,
    dataset_name: str,
    records: list[dict[str, Any]],
    batch_size: int = 16,
) -> dict[str, np.ndarray]:
    """``{img_path: float32 S x S rough map}`` from cached tokens (no backbone)."""
    store = ClipFeatureStore(profile)
    side = profile.clip.image_size
    texts = store.text(sorted({r["cls_name"] for r in records}))
    text_of = dict(zip(sorted({r["cls_name"] for r in records}), texts))
    device = next(umci.parameters()).device
    umci.eval()
    maps: dict[str, np.ndarray] = {}
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        per_image = [store.tokens(dataset_name, rec) for rec in chunk]
        tokens = [torch.stack(stage).to(device) for stage in zip(*per_image)]
        text = torch.stack([text_of[rec["cls_name"]] for rec in chunk]).to(device)
        with torch.no_grad():
            rough = umci(tokens, text, side).rough_map.cpu().numpy().astype(np.float32)
        maps.update({rec["img_path"]: m for rec, m in zip(chunk, rough)})
    store.save_manifest(dataset_name)
    return maps


# -- dataset runner ----------------------------------------------------------------------


def umci_weights_hash(umci: UMCI) -> str:
    """Content hash of UMCI's weights (names, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(umci.state_dict().items()):
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def variant_of(profile: ProfileConfig, mmr_cfg: MMRConfig | None) -> ProfileConfig:
    """The profile with its ``mmr`` section replaced (None: unchanged)."""
    if mmr_cfg is None:
        return profile
    overrides = {f"mmr.{k}": v for k, v in mmr_cfg.__dict__.items()}
    return profile.replace(**overrides)


@dataclass
class MapSet:
    """Final maps of one variant on one dataset: ``maps(rec)`` reads one as float32.

    Usable directly as ``evaluate_maps(..., get_map=maps, ...)``.
    """

    dir: Path
    variant_key: str
    paths: dict[str, Path] = field(default_factory=dict)
    computed: int = 0  # maps written by this call (the rest were already there)

    def __call__(self, rec: Record) -> np.ndarray:
        return read_map(self.paths[rec["img_path"]])

    def sidecar(self, rec: Record) -> dict[str, Any]:
        """What MMR did in this image: regions, boxes, points (x, y) and SAM's scores."""
        return json.loads(self.paths[rec["img_path"]].with_suffix(".json").read_text())

    def regions(self, rec: Record) -> int:
        """How many regions MMR refined in this image (0: the map is the rough map)."""
        return int(self.sidecar(rec)["regions"])


# Maps are stored exactly as computed, never rounded. Metrics rank pixels, and a trained
# UMCI's rough maps on the other dataset can sit far below 1e-4 (the earlier mini
# backbones', on synth_mvtec: image maxima 8e-7 to 3e-5), where float16 steps by 6e-8:
# 13 to 500 levels below them. Stored as float16, that smoke profile's +UMCI rough maps
# read pixel AUROC / PRO-l200 70.3 / 30.4 and 68.9 / 34.7 in the two directions, as
# computed 70.3 / 30.6 and 69.7 / 30.1; +UMCI+MMR's AP on synth_mvtec read 4.8 instead of
# 6.4.
MAP_DTYPE = np.float32
# A final map is M_c (the S x S rough map upsampled) except where MMR's masks changed it,
# so it is stored as the rough map, the changed pixels (bit-packed, deflated) and their
# values, and rebuilt by the same upsampling (``read_map``). At the paper's sizes a map
# of a 1024 x 1024 MVTec AD image is 4 MB as float32 and about 1 MB so (the 518 x 518
# rough map); 30 variants of MVTec AD's and VisA's test images are ~0.6 TB the first way.
# A checksum of the whole map makes the rebuilding exact or an error, never approximate.
# The values are the same float32 either way, so the format is not part of the map key:
# a folder written before (whole float32 .npy maps) keeps serving its maps, and an
# interrupted one is completed in the new format.
MAP_FORMAT = "rough+changed-v1"


def map_path(folder: Path, rec: Record) -> Path:
    """Where a record's map is (a whole ``.npy`` written before ``MAP_FORMAT``), or goes."""
    stem = folder / Path(rec["img_path"])
    earlier = stem.with_suffix(".npy")
    compact = stem.with_suffix(".npz")
    return earlier if earlier.is_file() and not compact.is_file() else compact


def _save_map(path: Path, steps: MMRResult, rough_map: np.ndarray) -> None:
    """The map (``MAP_FORMAT`` .npz) and a sidecar with MMR's prompts and scores (.json).

    The sidecar is written first: a map file only exists once the image is complete.
    """
    if path.suffix != ".npz":
        raise ValueError(f"{path}: maps are written as .npz ({MAP_FORMAT}).")
    write_json_atomic(path.with_suffix(".json"), {
        "regions": len(steps.prompts),
        "boxes": steps.prompts.boxes.tolist(),
        "points": steps.prompts.points.tolist(),
        "scores": np.round(steps.scores, 5).tolist(),
    })
    final = np.ascontiguousarray(steps.final_map, dtype=MAP_DTYPE)
    rough = np.asarray(rough_map, dtype=np.float32)
    # Compared as bits: a NaN or a -0.0 is a changed value like any other.
    changed = final.view(np.uint32) != upsampled_rough(rough, final.shape).view(np.uint32)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, rough=rough, size=np.array(final.shape, np.int64),
                 changed=np.frombuffer(zlib.compress(np.packbits(changed).tobytes()), np.uint8),
                 values=final[changed], crc32=np.array([zlib.crc32(final.tobytes())], np.uint64))


def read_map(path: Path) -> np.ndarray:
    """A stored final map (float32, the original size), rebuilt exactly as it was computed.

    ``.npy``: a map stored whole (hand-made ones, e.g. in tests).
    """
    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path).astype(MAP_DTYPE)
    with np.load(path) as stored:
        size = tuple(int(v) for v in stored["size"])
        final = upsampled_rough(stored["rough"], size)
        bits = np.frombuffer(zlib.decompress(stored["changed"].tobytes()), np.uint8)
        changed = np.unpackbits(bits, count=size[0] * size[1]).reshape(size).astype(bool)
        final[changed] = stored["values"]
        expected = int(stored["crc32"][0])
    if zlib.crc32(final.tobytes()) != expected:
        raise UserError(f"The map {path} does not rebuild to the map that was computed (it "
                        "was written on a machine whose bilinear resize rounds differently, "
                        "or the file is damaged); delete its folder to compute it again here.")
    return final


def map_key(profile: ProfileConfig, umci: UMCI, data: str | None = None) -> str:
    """Hash of exactly what determines a final map, nothing more.

    CLIP's identity and resolution, how class names reach the prompts, the cache dtype
    (tokens are read back from it), UMCI's module config and weights, the ``mmr`` section,
    with MMR on SAM's identity, and ``data``: the fingerprint of the dataset's files
    (``data.fingerprint``), since the same paths can hold other pictures. Evaluation
    settings, paths and sweep lists are not in it: changing them never recomputes a map.
    """
    import dataclasses

    from clipsam_lib.modeling import text_prompts
    from clipsam_lib.modeling.clip_backbone import clip_identity
    from clipsam_lib.modeling.sam_backbone import sam_identity

    clip = profile.clip
    blob = {
        "clip": clip_identity(clip),
        "prompts": [text_prompts.PROMPT_VERSION, clip.keep_underscore, clip.class_names],
        "cache_dtype": profile.cache_dtype,
        "umci": dataclasses.asdict(umci.cfg),
        "umci_weights": umci_weights_hash(umci),
        "mmr": dataclasses.asdict(profile.mmr),
        "sam": sam_identity(profile.sam) if profile.mmr.enabled else None,
        "stored_as": np.dtype(MAP_DTYPE).name,  # the values, whatever the file format
        "data": data,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def run_dataset(
    workspace: Workspace | ProfileConfig,
    umci: UMCI | str | Path,
    dataset_name: str,
    records: Sequence[Record],
    out_dir: str | Path | None = None,
    *,
    mmr_cfg: MMRConfig | None = None,
    progress: bool = True,
    chunk_size: int = 16,
) -> MapSet:
    """Write the final map of every record; skip those already written (resume).

    Maps go to ``<out_dir>/<dataset>/<map_key>/<img_path>.npz`` (``out_dir`` defaults to
    ``results/<profile>/maps``; ``MAP_FORMAT``, read back by ``read_map`` as float32 at the
    original size), each with a ``.json`` sidecar (MMR's regions, boxes, points, scores). ``mmr_cfg`` replaces ``profile.mmr``
    (an MMR ablation variant). Missing backbone features are extracted into the caches
    first, by the workspace's backbones; SAM's decoder is the workspace's SAM.
    """
    ws = as_workspace(workspace)
    profile = variant_of(ws.profile, mmr_cfg)
    umci = _as_umci(umci, ws.device)
    # The whole test split's files, not only ``records``': a subset shares its folder.
    data = records_fingerprint(profile, dataset_name, ws.dataset(dataset_name).records())
    key = map_key(profile, umci, data)
    root = Path(out_dir) if out_dir is not None else paths.results_subdir(profile, "maps")
    folder = root / dataset_name / key
    maps = MapSet(folder, key, {rec["img_path"]: map_path(folder, rec) for rec in records})
    todo = [rec for rec in records if not maps.paths[rec["img_path"]].is_file()]
    if not todo:
        mark_used(folder)
        return maps
    write_json_atomic(folder / "variant.json", {
        "dataset": dataset_name, "variant_key": key, "config": profile.to_dict(),
    })
    mark_used(folder)

    extract_clip_features(profile, dataset_name, todo, backbone=ws.clip, progress=progress)
    store = ClipFeatureStore(profile)
    sam = cache = None
    if profile.mmr.enabled:
        extract_sam_embeddings(profile, dataset_name, todo, progress=progress, backbone=ws.sam)
        sam = ws.sam.get().model  # only its prompt encoder and mask decoder run here
        cache = sam_cache(profile)

    bar = tqdm(total=len(todo), desc=f"maps {dataset_name}", disable=not progress)
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start : start + chunk_size]
        rough = rough_maps(profile, umci, dataset_name, chunk)
        for rec in chunk:
            size = (int(rec["height"]), int(rec["width"]))
            embedding = None
            if profile.mmr.enabled:
                embedding = cached_embedding(cache, store.image_key(dataset_name, rec))
            steps = final_map_of(rough[rec["img_path"]], profile.mmr, size, sam, embedding)
            _save_map(maps.paths[rec["img_path"]], steps, rough[rec["img_path"]])
            maps.computed += 1
            bar.update()
    bar.close()
    return maps


def read_variant(folder: str | Path) -> dict[str, Any]:
    """The ``variant.json`` of a map folder (dataset, key, full config)."""
    return json.loads((Path(folder) / "variant.json").read_text())
