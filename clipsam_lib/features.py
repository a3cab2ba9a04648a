"""On-disk cache of frozen-backbone outputs.

CLIP and SAM are frozen, so their outputs for an image never change for a given model,
resolution and dtype. Every training run, ablation and sweep reads them from here; only
the first pass pays for the backbone. One file per image, written atomically, so an
interrupted extraction keeps everything already finished.

Layout: ``<root>/<model_key>/<key[:2]>/<key>.pt`` where ``model_key`` hashes the model
identity (config + weights) and ``key`` hashes the image content, resolution and dtype.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from clipsam_lib import paths
from clipsam_lib.cleanup import mark_used
from clipsam_lib.config import ProfileConfig
from clipsam_lib.io_utils import atomic_path, disk_error, write_json_atomic
from clipsam_lib.modeling import text_prompts

STORAGE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def image_hash(image: np.ndarray) -> str:
    """Content hash of an image array (shape, dtype and bytes)."""
    digest = hashlib.sha256()
    digest.update(f"{image.shape}|{image.dtype}|".encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def model_key(identity: dict[str, Any]) -> str:
    """Short stable hash of a model identity dict (architecture config + weights hash)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


class FeatureCache:
    """Per-image tensors of one frozen model, stored in a compact dtype.

    ``FeatureCache.bytes_read`` counts the bytes of every entry read in this process (the
    rehearsal's cache I/O column).
    """

    bytes_read = 0

    def __init__(self, root: str | Path, identity: dict[str, Any], storage_dtype: str = "fp16"):
        if storage_dtype not in STORAGE_DTYPES:
            raise ValueError(
                f"cache dtype {storage_dtype!r} is not one of {sorted(STORAGE_DTYPES)}."
            )
        self.identity = dict(identity)
        self.storage_dtype = storage_dtype
        self.dir = Path(root) / model_key(identity)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise (disk_error(self.dir, err) or err) from None
        identity_file = self.dir / "identity.json"
        if not identity_file.exists():
            write_json_atomic(identity_file, self.identity)
        mark_used(self.dir)

    def key(self, image_key: str, **params: Any) -> str:
        """Entry key: image content hash + everything else that changes the output."""
        extra = json.dumps({**params, "storage": self.storage_dtype}, sort_keys=True)
        return hashlib.sha256(f"{image_key}|{extra}".encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.pt"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        """The stored tensors (in storage dtype), or None if absent or unreadable."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            FeatureCache.bytes_read += path.stat().st_size
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable entry is just recomputed
            warnings.warn(f"Feature cache entry {path} is unreadable ({err}); recomputing it.")
            path.unlink(missing_ok=True)
            return None

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Store tensors; floating ones are cast to the storage dtype. Atomic."""
        dtype = STORAGE_DTYPES[self.storage_dtype]
        packed = {
            name: (t.detach().to("cpu", dtype) if t.is_floating_point() else t.detach().cpu())
            for name, t in tensors.items()
        }
        with atomic_path(self.path(key)) as tmp:
            torch.save(packed, tmp)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.dir.rglob("*.pt"))

    def __len__(self) -> int:
        return sum(1 for _ in self.dir.rglob("*.pt"))


# -- CLIP: stage tokens and text features ---------------------------------------------------
# Entries of the CLIP cache, per image (keyed by content hash, resolution and backbone
# dtype): ``{"tokens": [n_stages, g*g, C]}`` and, in an entry of its own so that image
# scores never load the ~11 MB of tokens, ``{"global": [D]}`` (the image embedding) and ``{"text": [2, D]}`` per displayed class name.
# A per-dataset manifest maps image paths to content hashes (checked against file size and
# mtime), so readers find an image's entry without decoding the image again.

CLIP_SUBDIR = "clip"


@dataclass
class ExtractionReport:
    """What one ``extract_clip_features`` call did."""

    dataset: str
    images: int
    computed: int  # images that went through the backbone
    cached: int  # images already in the cache
    texts_computed: int
    seconds: float  # whole call
    text_seconds: float  # of which class texts (the prompt ensemble: 420 sentences a class)
    cache_entries: int
    cache_bytes: int

    def __str__(self) -> str:
        return (
            f"{self.dataset}: {self.images} images ({self.computed} computed, {self.cached} "
            f"cached), {self.texts_computed} new class texts, {self.seconds:.1f} s "
            f"({self.text_seconds:.1f} s text); CLIP cache "
            f"{self.cache_entries} entries, {self.cache_bytes / 2**20:.1f} MiB"
        )


def clip_cache(profile: ProfileConfig) -> FeatureCache:
    """The FeatureCache of the profile's CLIP configuration (no model is built)."""
    from clipsam_lib.modeling.clip_backbone import clip_identity

    return FeatureCache(
        paths.cache_dir(profile) / CLIP_SUBDIR, clip_identity(profile.clip), profile.cache_dtype
    )


class ClipFeatureStore:
    """Reads cached CLIP outputs for training and inference; never builds a backbone."""

    def __init__(self, profile: ProfileConfig):
        self.profile = profile
        self.cfg = profile.clip
        self.cache = clip_cache(profile)
        self._manifests: dict[str, dict[str, Any]] = {}

    # -- keys ------------------------------------------------------------------------------
    def tokens_key(self, image_key: str) -> str:
        return self.cache.key(
            image_key, kind="clip_tokens", size=self.cfg.image_size, dtype=self.cfg.dtype
        )

    def global_key(self, image_key: str) -> str:
        return self.cache.key(
            image_key, kind="clip_global", size=self.cfg.image_size, dtype=self.cfg.dtype
        )

    def has_image(self, image_key: str) -> bool:
        """Both entries of an image (tokens, global embedding) are cached."""
        return self.tokens_key(image_key) in self.cache and self.global_key(image_key) in self.cache

    def text_key(self, class_name: str) -> str:
        shown = text_prompts.display_name(
            class_name, self.cfg.keep_underscore, self.cfg.class_names
        )
        name_hash = hashlib.sha256(f"{text_prompts.PROMPT_VERSION}|{shown}".encode()).hexdigest()
        return self.cache.key(name_hash, kind="clip_text")

    def image_key(self, dataset_name: str, rec: dict[str, Any]) -> str:
        """Content hash of a record's image, from the manifest when the file is unchanged."""
        path = paths.dataset_root(self.profile, dataset_name) / rec["img_path"]
        known = self._known_hash(dataset_name, path, rec["img_path"])
        if known is not None:
            return known
        key = image_hash(read_rgb(path))
        self.remember(dataset_name, rec["img_path"], path, key)
        return key

    # -- reading ---------------------------------------------------------------------------
    def stored_tokens(self, image_key: str) -> torch.Tensor | None:
        """``[n_stages, g*g, C]`` as stored (the compact cache dtype), or None."""
        entry = self.cache.get(self.tokens_key(image_key))
        return None if entry is None else entry["tokens"]

    def tokens_for_key(self, image_key: str) -> list[torch.Tensor] | None:
        """Float32 ``[g*g, C]`` per stage, or None when this image is not cached."""
        entry = self.cache.get(self.tokens_key(image_key))
        return None if entry is None else list(entry["tokens"].float().unbind(0))

    def global_for_key(self, image_key: str) -> torch.Tensor | None:
        """Float32 ``[D]`` global image embedding, or None when not cached."""
        entry = self.cache.get(self.global_key(image_key))
        return None if entry is None else entry["global"].float()

    def global_embedding(self, dataset_name: str, rec: dict[str, Any]) -> torch.Tensor:
        """Float32 ``[D]`` global image embedding of a record's image (raises if absent)."""
        entry = self.global_for_key(self.image_key(dataset_name, rec))
        if entry is None:
            raise KeyError(
                f"CLIP features of {dataset_name}/{rec['img_path']} are not in the cache "
                f"{self.cache.dir}; run features.extract_clip_features first."
            )
        return entry

    def tokens(self, dataset_name: str, rec: dict[str, Any]) -> list[torch.Tensor]:
        """Float32 ``[g*g, C]`` per stage of a record's image (raises if not extracted)."""
        tokens = self.tokens_for_key(self.image_key(dataset_name, rec))
        if tokens is None:
            raise KeyError(
                f"CLIP features of {dataset_name}/{rec['img_path']} are not in the cache "
                f"{self.cache.dir}; run features.extract_clip_features(profile, "
                f"{dataset_name!r}, records) first."
            )
        return tokens

    def text(self, class_names: list[str]) -> torch.Tensor:
        """``[n, 2, D]`` unit-norm text features (raises if a class was never extracted)."""
        rows = []
        for name in class_names:
            entry = self.cache.get(self.text_key(name))
            if entry is None:
                raise KeyError(
                    f"CLIP text features of class {name!r} are not in the cache "
                    f"{self.cache.dir}; run features.extract_clip_features for a dataset "
                    "with that class first."
                )
            # Stored in the compact cache dtype: re-normalise in float32.
            rows.append(torch.nn.functional.normalize(entry["text"].float(), dim=-1))
        return torch.stack(rows)

    def has_text(self, class_name: str) -> bool:
        return self.text_key(class_name) in self.cache

    # -- manifest --------------------------------------------------------------------------
    def _manifest(self, dataset_name: str) -> dict[str, Any]:
        if dataset_name not in self._manifests:
            file = self._manifest_path(dataset_name)
            root = str(paths.dataset_root(self.profile, dataset_name))
            try:
                data = json.loads(file.read_text())
            except (OSError, ValueError):
                data = {}
            if data.get("root") != root:
                data = {"root": root, "files": {}}
            self._manifests[dataset_name] = data
        return self._manifests[dataset_name]

    def _manifest_path(self, dataset_name: str) -> Path:
        return self.cache.dir / "manifests" / f"{dataset_name}.json"

    def _known_hash(self, dataset_name: str, path: Path, rel: str) -> str | None:
        entry = self._manifest(dataset_name)["files"].get(rel)
        if entry is None:
            return None
        try:
            stat = path.stat()
        except OSError:
            return None
        return entry[2] if entry[:2] == [stat.st_size, stat.st_mtime_ns] else None

    def remember(self, dataset_name: str, rel: str, path: Path, key: str) -> None:
        stat = path.stat()
        self._manifest(dataset_name)["files"][rel] = [stat.st_size, stat.st_mtime_ns, key]

    def save_manifest(self, dataset_name: str) -> None:
        """Write the manifest (merged with what another process may have added)."""
        mine = self._manifest(dataset_name)
        try:
            theirs = json.loads(self._manifest_path(dataset_name).read_text())
        except (OSError, ValueError):
            theirs = {}
        if theirs.get("root") == mine["root"]:
            mine["files"] = {**theirs.get("files", {}), **mine["files"]}
        write_json_atomic(self._manifest_path(dataset_name), mine)


# CLIP's own logit scale (exp(4.6052) = 100), fixed in APRIL-GAN's image score.
IMAGE_LOGIT_SCALE = 100.0


def clip_global_scores(
    profile: ProfileConfig, dataset_name: str, records: list[dict[str, Any]]
) -> dict[str, float]:
    """``{img_path: P(anomalous)}`` from the cached global embeddings: the softmax over
    (normal, anomalous) of ``100 cos(image embedding, class text features)`` (peer)."""
    store = ClipFeatureStore(profile)
    classes = sorted({rec["cls_name"] for rec in records})
    text_of = dict(zip(classes, store.text(classes)))
    return {
        rec["img_path"]: global_score(store.global_embedding(dataset_name, rec),
                                      text_of[rec["cls_name"]])
        for rec in records
    }


def global_score(embedding: torch.Tensor, text: torch.Tensor) -> float:
    """P(anomalous) of one image: softmax over (normal, anomalous) of 100 cos(embedding,
    text features ``[2, D]``), APRIL-GAN's zero-shot image score."""
    embedding = torch.nn.functional.normalize(embedding.float(), dim=-1)
    logits = IMAGE_LOGIT_SCALE * torch.nn.functional.normalize(text.float(), dim=-1) @ embedding
    return float(logits.softmax(-1)[1])


def clip_score_lookup(
    profile: ProfileConfig, dataset_name: str, records: list[dict[str, Any]]
) -> Any:
    """``rec -> CLIP global score`` for ``evaluate_maps(clip_scores=...)``, or None when
    ``eval.image_score`` does not use it (features of the records must be extracted)."""
    if "clip_global" not in profile.eval.image_score:
        return None
    scores = clip_global_scores(profile, dataset_name, records)
    return lambda rec: scores[rec["img_path"]]


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as RGB uint8 ``H x W x 3`` (the data layer's reader)."""
    from clipsam_lib.data.io import read_image_rgb

    return read_image_rgb(path)


def extract_clip_features(
    profile: ProfileConfig,
    dataset_name: str,
    records: list[dict[str, Any]],
    backbone: Any = None,
    progress: bool = True,
    batch_size: int | None = None,
) -> ExtractionReport:
    """Fill the CLIP cache for every record (stage tokens) and every class (text).

    Images already cached are skipped; the backbone (``ClipBackbone``) is built only when
    something is missing, unless one is passed. Safe to interrupt: finished images stay.
    ``batch_size`` defaults to the backbone's ``forward_batch`` (what fits the CPU, 8 on
    GPUs), so each group is stored as soon as its one pass ends.
    """
    start = time.perf_counter()
    store = ClipFeatureStore(profile)
    root = paths.dataset_root(profile, dataset_name)
    lazy = _clip_source(profile, backbone)
    batch: list[tuple[str, np.ndarray]] = []
    computed = cached = 0
    for rec in tqdm(records, desc=f"CLIP {dataset_name}", disable=not progress, unit="img"):
        path = root / rec["img_path"]
        key = store._known_hash(dataset_name, path, rec["img_path"])
        if key is not None and store.has_image(key):
            cached += 1
            continue
        image = read_rgb(path)
        key = image_hash(image)
        store.remember(dataset_name, rec["img_path"], path, key)
        if store.has_image(key):
            cached += 1
            continue
        batch.append((key, image))
        if len(batch) == (batch_size or lazy.get().forward_batch):
            computed += _encode_and_store(store, lazy.get(), batch)
            batch = []
    computed += _encode_and_store(store, lazy.get(), batch) if batch else 0
    store.save_manifest(dataset_name)
    text_start = time.perf_counter()
    texts = _ensure_text(store, lazy, sorted({rec["cls_name"] for rec in records}))
    end = time.perf_counter()
    return ExtractionReport(
        dataset=dataset_name, images=len(records), computed=computed, cached=cached,
        texts_computed=texts, seconds=end - start, text_seconds=end - text_start,
        cache_entries=len(store.cache), cache_bytes=store.cache.size_bytes(),
    )


def cache_clip_images(
    profile: ProfileConfig,
    images: list[np.ndarray],
    backbone: Any = None,
    progress: bool = False,
    batch_size: int | None = None,
) -> list[str]:
    """Cache the stage tokens of in-memory images (e.g. mosaics); returns their image keys."""
    store = ClipFeatureStore(profile)
    lazy = _clip_source(profile, backbone)
    keys = [image_hash(image) for image in images]
    todo = [(k, im) for k, im in zip(keys, images) if not store.has_image(k)]
    todo = list(dict(todo).items())  # identical images once
    if not todo:
        return keys
    batch_size = batch_size or lazy.get().forward_batch
    for start in tqdm(range(0, len(todo), batch_size), desc="CLIP images", disable=not progress):
        _encode_and_store(store, lazy.get(), todo[start:start + batch_size])
    return keys


def _clip_source(profile: ProfileConfig, backbone: Any) -> Any:
    """``backbone`` (a ``ClipBackbone`` or a ``workspace.Lazy`` of one) as a Lazy; None: a
    Lazy that builds the profile's CLIP on first use, so a fully cached pass never loads it."""
    from clipsam_lib.workspace import Lazy

    if backbone is not None:
        return Lazy.of(backbone)
    from clipsam_lib.modeling.clip_backbone import ClipBackbone

    return Lazy(lambda: ClipBackbone(profile.clip, profile.device,
                                     compile_cache=paths.compile_cache_dir(profile)))


def _encode_and_store(
    store: ClipFeatureStore, backbone: Any, batch: list[tuple[str, np.ndarray]]
) -> int:
    pixels = torch.stack([backbone.preprocess(image) for _, image in batch])
    stages, global_embedding = backbone.encode_images(pixels)
    stages = torch.stack(stages, dim=1)  # [B, n_stages, g*g, C]
    for (key, _), tokens, embedding in zip(batch, stages, global_embedding):
        store.cache.put(store.tokens_key(key), {"tokens": tokens})
        store.cache.put(store.global_key(key), {"global": embedding})
    return len(batch)


def _ensure_text(store: ClipFeatureStore, lazy: Any, class_names: list[str]) -> int:
    missing = [name for name in class_names if not store.has_text(name)]
    for name in missing:
        store.cache.put(store.text_key(name), {"text": lazy.get().text_features([name])[0]})
    return len(missing)


# -- SAM: image embeddings ------------------------------------------------------------------
# Entries of the SAM cache: SamEmbedding.to_tensors() per image, keyed by content hash and
# SAM's input size, under the model key of ``sam_identity``.


def sam_cache(profile: ProfileConfig) -> FeatureCache:
    """The profile's SAM embedding cache (``<cache_dir>/sam/<model key>/``)."""
    from clipsam_lib.modeling.sam_backbone import sam_identity

    return FeatureCache(paths.cache_dir(profile) / "sam", sam_identity(profile.sam),
                        profile.cache_dtype)


def embedding_key(cache: FeatureCache, image_rgb: np.ndarray | str) -> str:
    """Cache key of an image's embedding (image content + SAM input size).

    ``image_rgb`` is the image or its ``image_hash`` (e.g. from the CLIP store's manifest,
    which spares decoding the image again).
    """
    content = image_rgb if isinstance(image_rgb, str) else image_hash(image_rgb)
    return cache.key(content, kind="sam_embedding", image_size=cache.identity["image_size"])


def cached_embedding(cache: FeatureCache, image_rgb: np.ndarray | str, backbone: Any = None):
    """The ``SamEmbedding`` of an image (or image hash) from the cache.

    A missing entry is computed and stored when a backbone (a ``SamBackbone`` or a
    ``workspace.Lazy`` of one) and the image itself are given; otherwise it is a clear
    error, and SAM is never built here.
    """
    from clipsam_lib.modeling.sam_backbone import SamEmbedding
    from clipsam_lib.workspace import Lazy

    key = embedding_key(cache, image_rgb)
    tensors = cache.get(key)
    if tensors is not None:
        return SamEmbedding.from_tensors(tensors)
    if backbone is None or isinstance(image_rgb, str):
        raise KeyError(
            f"No cached SAM embedding for this image in {cache.dir}; run "
            "extract_sam_embeddings(profile, dataset_name, records) first."
        )
    cache.put(key, Lazy.of(backbone).get().embed(image_rgb).to_tensors())
    # Read back what was stored, so a warm and a cold cache give the same numbers.
    return SamEmbedding.from_tensors(cache.get(key))


class SamEmbeddingReader:
    """Reads cached SAM embeddings of a profile without ever building SAM.

    Call it with an RGB image or its ``image_hash``.
    """

    def __init__(self, profile: ProfileConfig):
        self.cache = sam_cache(profile)

    def __call__(self, image_rgb: np.ndarray | str):
        return cached_embedding(self.cache, image_rgb)

    def has(self, image_rgb: np.ndarray | str) -> bool:
        return embedding_key(self.cache, image_rgb) in self.cache


def extract_sam_embeddings(
    profile: ProfileConfig,
    dataset_name: str,
    records: list[dict[str, Any]],
    progress: bool = True,
    backbone: Any = None,
) -> FeatureCache:
    """Fill the SAM embedding cache for ``records`` of a dataset; skips cached images.

    Cached images are recognised from the CLIP store's manifest (file size and mtime), so
    a warm pass decodes no image. ``backbone``: a ``SamBackbone`` or a ``workspace.Lazy`` of
    one (built only if an image is missing); None builds one from the profile if needed.
    """
    from clipsam_lib.modeling.sam_backbone import SamBackbone
    from clipsam_lib.workspace import Lazy

    cache = sam_cache(profile)
    store = ClipFeatureStore(profile)
    root = paths.dataset_root(profile, dataset_name)
    lazy = Lazy.of(backbone) if backbone is not None else Lazy(
        lambda: SamBackbone(profile.sam, device=profile.device,
                            compile_cache=paths.compile_cache_dir(profile)))
    for rec in tqdm(records, desc=f"SAM embeddings {dataset_name}", disable=not progress):
        path = root / rec["img_path"]
        known = store._known_hash(dataset_name, path, rec["img_path"])
        if known is not None and embedding_key(cache, known) in cache:
            continue
        image = read_rgb(path)
        store.remember(dataset_name, rec["img_path"], path, image_hash(image))
        if embedding_key(cache, image) not in cache:
            cached_embedding(cache, image, lazy)
    store.save_manifest(dataset_name)
    return cache
