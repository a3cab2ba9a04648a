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
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipsam_lib.io_utils import atomic_path, write_json_atomic

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
    """Per-image tensors of one frozen model, stored in a compact dtype."""

    def __init__(self, root: str | Path, identity: dict[str, Any], storage_dtype: str = "fp16"):
        if storage_dtype not in STORAGE_DTYPES:
            raise ValueError(
                f"cache dtype {storage_dtype!r} is not one of {sorted(STORAGE_DTYPES)}."
            )
        self.identity = dict(identity)
        self.storage_dtype = storage_dtype
        self.dir = Path(root) / model_key(identity)
        self.dir.mkdir(parents=True, exist_ok=True)
        identity_file = self.dir / "identity.json"
        if not identity_file.exists():
            write_json_atomic(identity_file, self.identity)

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
