"""Small MVTec-layout datasets with a learnable defect, and a test profile around them.

Each class is a smooth random texture in its own tint; defective images carry one or two
discs of near-black or near-white colour (the mask). Two datasets with different classes
and textures but the same kind of defect let a test ask whether UMCI trained on one
ranks the other's defect pixels higher than an untrained UMCI does: a tiny random-init
CLIP carries no semantics, so the defect must be visible in its raw patch features.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from clipsam_lib import train
from clipsam_lib.config import ProfileConfig, load_profile

SOURCE_CLASSES = [("felt", (1.0, 0.6, 0.3), 3.0), ("moss", (0.4, 1.0, 0.5), 6.0)]
OTHER_CLASSES = [("slate", (0.5, 0.6, 1.0), 2.0), ("sand", (1.0, 0.9, 0.6), 8.0)]


def _texture(rng: np.random.Generator, size: int, tint, sigma: float) -> np.ndarray:
    noise = gaussian_filter(rng.normal(size=(size, size)), sigma)
    noise = (noise - noise.min()) / (np.ptp(noise) + 1e-8)
    return 0.35 + 0.4 * noise[:, :, None] * np.asarray(tint)[None, None]


def _discs(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), bool)
    for _ in range(rng.integers(1, 3)):
        cy, cx = rng.integers(12, size - 12, 2)
        radius = rng.uniform(5, 9)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
    return mask


def write_dataset(
    root: Path, classes, n_good: int = 4, n_bad: int = 8, size: int = 112, seed: int = 0
) -> Path:
    """An MVTec-layout tree (``<cls>/test/{good,blob}``, ``ground_truth/blob``) at root."""
    rng = np.random.default_rng(seed)
    for cls, tint, sigma in classes:
        for kind, count in (("good", n_good), ("blob", n_bad)):
            for i in range(count):
                image = _texture(rng, size, tint, sigma)
                if kind == "blob":
                    mask = _discs(rng, size)
                    image[mask] = rng.choice([0.02, 0.98], 3)
                    _save(
                        root / cls / "ground_truth" / kind / f"{i:03d}_mask.png",
                        mask.astype(np.uint8) * 255,
                    )
                _save(
                    root / cls / "test" / kind / f"{i:03d}.png",
                    (image * 255).clip(0, 255).astype(np.uint8),
                )
    return root


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def tiny_profile(tmp: Path, **overrides) -> ProfileConfig:
    """The smoke profile shrunk for tests (tiny random-init backbones), on two datasets
    ``src`` and ``dst`` under tmp."""
    if not (tmp / "src").is_dir():
        write_dataset(tmp / "src", SOURCE_CLASSES, seed=0)
        write_dataset(tmp / "dst", OTHER_CLASSES, seed=1)
    settings = {
        # The unit tests' tiny random-init backbones (the smoke profile's before it took
        # the mini pretrained ones), with the MMR settings the tests were written for.
        "clip.model_name": "clipsam-tiny-vit",
        "clip.pretrained": None,
        "clip.stages": [1, 2, 3, 4],
        "sam.model_type": "tiny",
        "sam.checkpoint": None,
        "mmr.threshold_mode": "relative",
        "mmr.min_area": 64,
        "mmr.max_regions": 4,
        "clip.image_size": 112,
        "umci.hidden_dim": 32,
        "umci.heads": 4,
        "train.epochs": {"mvtec": 2, "visa": 2},
        "train.mosaic_rate": 0.0,
        **overrides,
    }
    return load_profile(
        "smoke",
        data_dir=str(tmp),
        cache_dir=str(tmp / "cache"),
        results_dir=str(tmp / "results"),
        datasets=[{"name": "src", "layout": "mvtec", "root": "src"},
                  {"name": "dst", "layout": "mvtec", "root": "dst"}],
        directions=[],
        **settings,
    )


@contextlib.contextmanager
def training_interrupted_in_epoch(index: int) -> Iterator[None]:
    """The body's ``train.train_umci`` stops with a KeyboardInterrupt (a user's Ctrl-C)
    when epoch ``index`` (0-based) starts; the epochs before it are saved as usual."""
    real = train._train_epoch

    def interrupted(profile, umci, optimizer, data, epoch, *rest):
        if epoch == index:
            raise KeyboardInterrupt
        return real(profile, umci, optimizer, data, epoch, *rest)

    with pytest.MonkeyPatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(train, "_train_epoch", interrupted)
        yield
