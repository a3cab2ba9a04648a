"""One workspace per run: the resolved datasets, the feature stores and the backbones.

A :class:`Workspace` is built from a profile and handed to every stage (extract, fit,
maps, evaluate), so that no stage re-discovers its inputs or builds its own model:

- datasets are resolved once (spec -> root -> index -> records, mask threshold) into
  :class:`DatasetHandle` objects;
- CLIP and SAM are built lazily, on the first stage that really needs one (a fully cached
  run builds neither), and then shared by every stage and every variant whose backbone
  identity is the same;
- ``ws.variant(overrides)`` is the workspace of an ablation variant: same datasets and
  backbones, other switches.

Everything a workspace holds is derived from its profile; it has no other state.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from clipsam_lib import paths
from clipsam_lib.config import DatasetSpec, ProfileConfig
from clipsam_lib.devices import resolve_device
from clipsam_lib.modeling import BACKBONE_BUILDS

T = TypeVar("T")

__all__ = ["BACKBONE_BUILDS", "DatasetHandle", "Lazy", "Workspace", "as_workspace"]


class Lazy(Generic[T]):
    """A value built by ``factory`` on the first ``get()`` and kept."""

    def __init__(self, factory: Callable[[], T], value: T | None = None):
        self._factory = factory
        self._value = value

    def get(self) -> T:
        if self._value is None:
            self._value = self._factory()
        return self._value

    @property
    def built(self) -> bool:
        return self._value is not None

    @classmethod
    def of(cls, value: Any) -> Lazy:
        """``value`` as a Lazy: a Lazy stays itself, anything else is already built."""
        return value if isinstance(value, Lazy) else cls(lambda: value, value)


@dataclass(frozen=True)
class DatasetHandle:
    """One of the profile's datasets, resolved once: where it is and what it holds."""

    name: str
    spec: DatasetSpec
    root: Path
    index: dict[str, Any] = field(repr=False)
    index_hash: str
    mask_threshold: float

    def records(self, max_per_class: int | None = None) -> list[dict[str, Any]]:
        """The test split (the only one the zero-shot protocol uses), profile's classes."""
        from clipsam_lib.data import records

        return records(self.index, "test", self.spec.classes, max_per_class)


class _Shared:
    """What every workspace of one run shares: backbones by identity, dataset handles."""

    def __init__(self) -> None:
        self.backbones: dict[str, Lazy] = {}
        self.datasets: dict[str, DatasetHandle] = {}


class Workspace:
    """The run's datasets and backbones, derived from ``profile`` (see the module doc)."""

    def __init__(self, profile: ProfileConfig, *, _shared: _Shared | None = None):
        self.profile = profile
        self.device = resolve_device(profile.device)
        self._shared = _shared or _Shared()

    def __repr__(self) -> str:
        return f"Workspace({self.profile.name}, {self.profile.hash()}, {self.device})"

    def variant(self, overrides: dict[str, Any] | None = None) -> Workspace:
        """The workspace of ``profile.replace(**overrides)``, sharing datasets and backbones."""
        if not overrides:
            return self
        return Workspace(self.profile.replace(**overrides), _shared=self._shared)

    # -- datasets -------------------------------------------------------------------------
    def dataset(self, name: str) -> DatasetHandle:
        """The resolved dataset ``name`` (indexed on first use, then kept)."""
        from clipsam_lib.data import load_or_build_index
        from clipsam_lib.provenance import index_hash

        spec = self.profile.dataset(name)
        root = paths.dataset_root(self.profile, name)
        threshold = self.profile.eval.mask_threshold
        key = json.dumps([name, spec.layout, spec.split, str(root), spec.classes, threshold,
                          spec.folder_options()])
        if key not in self._shared.datasets:
            index = load_or_build_index(
                root, spec.layout, spec.split, mask_threshold=threshold,
                fallback_dir=paths.index_fallback_dir(self.profile),  # read-only roots
                folder=spec.folder_options(),
            )
            self._shared.datasets[key] = DatasetHandle(name, spec, root, index,
                                                       index_hash(index), threshold)
        return self._shared.datasets[key]

    def train_records(self, name: str) -> list[dict[str, Any]]:
        """The auxiliary dataset's test split, at most ``train.max_images_per_class``."""
        return self.dataset(name).records(self.profile.train.max_images_per_class)

    def eval_records(self, name: str) -> list[dict[str, Any]]:
        """The evaluation records, at most ``eval.max_images_per_class`` per class."""
        return self.dataset(name).records(self.profile.eval.max_images_per_class)

    # -- backbones ------------------------------------------------------------------------
    @property
    def clip(self) -> Lazy:
        """The profile's CLIP (``ClipBackbone``), built on the first ``get()``."""
        from clipsam_lib.modeling.clip_backbone import ClipBackbone, clip_identity

        cfg = self.profile.clip
        # Text features depend on how class names are shown, so that is part of the key.
        key = json.dumps(["clip", clip_identity(cfg), cfg.keep_underscore, cfg.class_names,
                          str(self.device)], sort_keys=True)
        return self._backbone(key, lambda: ClipBackbone(
            cfg, self.device, compile_cache=paths.compile_cache_dir(self.profile)))

    @property
    def sam(self) -> Lazy:
        """The profile's SAM (``SamBackbone``), built on the first ``get()``."""
        from clipsam_lib.modeling.sam_backbone import SamBackbone, sam_identity

        cfg = self.profile.sam
        key = json.dumps(["sam", sam_identity(cfg), str(self.device)], sort_keys=True)
        return self._backbone(key, lambda: SamBackbone(
            cfg, device=str(self.device), compile_cache=paths.compile_cache_dir(self.profile)))

    def _backbone(self, key: str, build: Callable[[], Any]) -> Lazy:
        if key not in self._shared.backbones:
            self._shared.backbones[key] = Lazy(build)
        return self._shared.backbones[key]


def as_workspace(profile_or_ws: ProfileConfig | Workspace) -> Workspace:
    """A workspace as given, or a new one for a bare profile (its own backbones)."""
    if isinstance(profile_or_ws, Workspace):
        return profile_or_ws
    return Workspace(profile_or_ws)
