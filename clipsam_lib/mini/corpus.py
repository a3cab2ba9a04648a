"""The pretraining corpus of the mini backbones: pictures the embedded benchmark never uses.

Zero-shot honesty: the mini CLIP and mini SAM are pretrained on scikit-image pictures
and procedural textures that are *not* the benchmark's sources, captioned with names
that are not its class names (nor the real MVTec AD / VisA class names), and masks are
drawn afresh from the corpus's own seed stream. ``check_disjoint`` enforces that and a
test calls it. The defect *procedures* (scratch, stain, pit, patch) are shared with the
benchmark: like a web-scale CLIP that has seen scratches before, the miniature knows
what kinds of damage exist, never the test pictures they are drawn on.

An item is an RGB uint8 picture with a list of region masks (the defects, each
connected component its own region, plus, for SAM, pasted shapes) and a caption made
from the project's own templates and states (``modeling.text_prompts``).

Measured and not adopted: a corpus of fresh views (crops anywhere at 35-100% of the
short side, rotations up to 30 degrees, shuffled channels, gamma, inversions, a quarter of
the pictures two sources side by side), trained with the earlier recipes (CLIP
8162681dabbd without the patch loss, SAM b34aaf9b7c39 training the best mask only). The APRIL-GAN
baseline's pixel AUROC rose from 64.0 / 75.6 to 67.2 / 77.5, but +UMCI went from
70.3 / 69.7 to 66.1 / 70.7, and the mini SAM trained on it fell to a median ground-truth-
box IoU of 0.375 / 0.316 (from 0.492 / 0.357; its final loss 0.77 against 0.52 in the same
1,000 steps: a harder corpus for the same budget). The rough maps' maxima were within
3 px of a defect in 3-8 of 40 anomalous images (2-6 with this corpus).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from itertools import islice
from typing import TypeVar

import cv2
import numpy as np
from scipy.ndimage import label

from clipsam_lib.data import synthetic
from clipsam_lib.modeling import text_prompts

CORPUS_VERSION = 1

# skimage.data pictures that load offline and that the benchmark's CATALOG does not use
# (skimage's "cat" is Chelsea, which the benchmark uses: excluded). name shown -> source.
PICTURES: dict[str, tuple[str, str]] = {
    "astronaut": ("astronaut", "object"),
    "cameraman": ("camera", "object"),
    "cell culture": ("cell", "texture"),
    "clock": ("clock", "object"),
    "colour wheel": ("colorwheel", "object"),
    "galaxy field": ("hubble_deep_field", "texture"),
    "logo": ("logo", "object"),
    "moon surface": ("moon", "texture"),
    "printed page": ("page", "texture"),
    "retina": ("retina", "object"),
    "text sample": ("text", "texture"),
    "phantom": ("shepp_logan_phantom", "object"),
}
# Procedural textures, drawn per image (textures.py-style formulas below).
TEXTURES = ("fabric", "marble", "ripple", "sponge", "stripes", "speckle")

# Names that must never appear in pretraining: the benchmark's classes and the real
# datasets' (the paper profile's) class names.
FORBIDDEN_NAMES = {
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper", "candle",
    "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2",
    "pcb3", "pcb4", "pipe fryum", "magnetic tile", "commutator",
}

DEFECT_TYPES = tuple(synthetic.DEFECTS)
CHUNK = 16  # pictures per task a worker thread is handed
T = TypeVar("T")
_LETTERS = "bcdfghklmnprstvz"
_VOWELS = "aeiou"


@dataclass
class CorpusItem:
    """One pretraining picture: RGB uint8 ``H x W x 3``, region masks, caption parts."""

    image: np.ndarray
    name: str  # the class name the caption uses
    anomalous: bool
    regions: list[np.ndarray] = field(default_factory=list)  # bool H x W, one per region
    # What each region is: "shape" (pasted, SAM's corpus only) or its defect type.
    region_kinds: list[str] = field(default_factory=list)

    def defect_mask(self) -> np.ndarray:
        mask = np.zeros(self.image.shape[:2], bool)
        for region in self.regions:
            mask |= region
        return mask


def check_disjoint() -> None:
    """Raise if the corpus shares a picture source or a class name with the benchmark."""
    benchmark_sources = {c.source for classes in synthetic.CATALOG.values() for c in classes}
    benchmark_sources.add("cat")  # skimage.data.cat() is chelsea
    benchmark_names = {c.name for classes in synthetic.CATALOG.values() for c in classes}
    shared_sources = benchmark_sources & {source for source, _ in PICTURES.values()}
    names = set(PICTURES) | set(TEXTURES)
    shared_names = names & (benchmark_names | FORBIDDEN_NAMES)
    if shared_sources or shared_names:
        raise AssertionError(
            f"The pretraining corpus shares sources {sorted(shared_sources)} or names "
            f"{sorted(shared_names)} with the benchmark; remove them from mini.corpus."
        )


def class_names() -> tuple[str, ...]:
    return tuple(PICTURES) + TEXTURES


def pseudo_word(rng: np.random.Generator) -> str:
    """A made-up name ("zorvek"): captions that carry no class word, so the text side
    learns that the state words, not the class word, say normal or anomalous."""
    syllables = int(rng.integers(2, 4))
    return "".join(rng.choice(list(_LETTERS)) + rng.choice(list(_VOWELS))
                   for _ in range(syllables)) + rng.choice(list(_LETTERS))


def caption(name: str, anomalous: bool, rng: np.random.Generator) -> str:
    """One sentence: a random template around a random state of the right group."""
    states = text_prompts.ANOMALOUS_STATES if anomalous else text_prompts.NORMAL_STATES
    state = states[int(rng.integers(len(states)))]
    template = text_prompts.TEMPLATES[int(rng.integers(len(text_prompts.TEMPLATES)))]
    return template.format(state.format(name))


# -- pictures ------------------------------------------------------------------------------
@cache
def _picture(source: str) -> np.ndarray:
    """A scikit-image picture as float32 H x W x C in [0, 1] (bool/float sources too)."""
    import skimage.data

    picture = np.asarray(getattr(skimage.data, source)())
    if picture.dtype == bool:
        picture = picture.astype(np.float32)
    elif picture.dtype == np.uint8:
        picture = picture.astype(np.float32) / 255.0
    else:
        picture = (picture - picture.min()) / max(float(np.ptp(picture)), 1e-6)
    if picture.ndim == 2:
        picture = picture[:, :, None]
    return np.ascontiguousarray(picture[:, :, :3], dtype=np.float32)


def _texture(kind: str, hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A procedural texture, float32 H x W x 3 in [0, 1], tinted at random."""
    height, width = hw
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    side = float(min(height, width))
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    noise = synthetic._smooth_noise((height, width), rng.uniform(0.02, 0.06) * side, rng)
    period = rng.uniform(0.03, 0.12) * side
    if kind == "fabric":
        grey = 0.5 + 0.25 * np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period)
    elif kind == "marble":
        grey = 0.5 + 0.4 * np.sin(2 * np.pi * u / (3 * period) + 3.0 * noise)
    elif kind == "ripple":
        radius = np.hypot(yy - rng.uniform(0, height), xx - rng.uniform(0, width))
        grey = 0.5 + 0.35 * np.sin(2 * np.pi * radius / period + noise)
    elif kind == "sponge":
        fine = synthetic._smooth_noise((height, width), rng.uniform(1.5, 3.5), rng)
        grey = np.where(fine > rng.uniform(-0.3, 0.5), 0.7, 0.3) + 0.05 * noise
    elif kind == "stripes":
        grey = np.where(np.sin(2 * np.pi * u / period) > 0, 0.72, 0.32) + 0.04 * noise
    else:  # speckle
        grey = 0.5 + 0.18 * synthetic._smooth_noise((height, width), rng.uniform(0.8, 2.0), rng)
    grey = grey + rng.normal(0.0, 0.015, grey.shape)
    tint = rng.uniform(0.35, 1.0, size=3).astype(np.float32)
    return np.clip(grey[:, :, None] * tint * 1.3, 0.0, 1.0).astype(np.float32)


def _base(name: str, hw: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, str]:
    if name in TEXTURES:
        return _texture(name, hw, rng), "texture"
    source, kind = PICTURES[name]
    picture = _picture(source)
    if picture.shape[2] == 1 and rng.random() < 0.5:  # some grey pictures get a tint
        picture = picture * rng.uniform(0.5, 1.0, size=3).astype(np.float32)
    return synthetic._variation(picture, hw, kind, rng), kind


def _as_rgb(picture: np.ndarray) -> np.ndarray:
    if picture.shape[2] == 1:
        picture = np.repeat(picture, 3, axis=2)
    return np.round(np.clip(picture, 0, 1) * 255).astype(np.uint8)


def _components(mask: np.ndarray, min_area: int) -> list[np.ndarray]:
    labels, count = label(mask)
    return [labels == k for k in range(1, count + 1) if (labels == k).sum() >= min_area]


def _paste_shape(picture: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A filled ellipse or polygon of another texture: a segmentable object for SAM."""
    height, width = picture.shape[:2]
    side = min(height, width)
    mask = np.zeros((height, width), np.uint8)
    cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
    if rng.random() < 0.5:
        axes = (int(rng.uniform(0.06, 0.25) * side), int(rng.uniform(0.06, 0.25) * side))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, rng.uniform(0, 180), 0, 360, 1, -1)
    else:
        corners = int(rng.integers(3, 7))
        angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
        radii = rng.uniform(0.08, 0.25, corners) * side
        points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
        cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    mask = mask.astype(bool)
    fill = _texture(TEXTURES[int(rng.integers(len(TEXTURES)))], (height, width), rng)
    picture = picture.copy() if picture.shape[2] == 3 else np.repeat(picture, 3, axis=2)
    picture[mask] = fill[mask]
    return picture, mask


def make_item(seed: int, role: str, index: int, *, defect_rate: float = 0.5,
              shapes: bool = False, word_rate: float = 0.0) -> CorpusItem:
    """Corpus item ``index`` of ``role`` ("clip" / "sam"): a pure function of its arguments.

    defect_rate: the share of items with 1-2 procedural defects. shapes: paste 0-2 shapes
    (SAM's regions too). word_rate: the share of captions whose name is a made-up word.
    """
    rng = synthetic._rng(seed, "mini-corpus", CORPUS_VERSION, role, index)
    names = class_names()
    name = names[int(rng.integers(len(names)))]
    hw = (int(rng.integers(180, 321)), int(rng.integers(180, 321)))
    picture, kind = _base(name, hw, rng)
    regions: list[np.ndarray] = []
    kinds: list[str] = []
    if shapes:
        for _ in range(int(rng.integers(0, 3))):
            picture, shape = _paste_shape(picture, rng)
            regions = [r & ~shape for r in regions] + [shape]
            kinds.append("shape")
    anomalous = bool(rng.random() < defect_rate)
    if anomalous:
        for _ in range(int(rng.integers(1, 3))):
            defect = DEFECT_TYPES[int(rng.integers(len(DEFECT_TYPES)))]
            picture, mask = synthetic.DEFECTS[defect](picture, kind, rng)
            parts = _components(mask, min_area=12)
            regions = [r & ~mask for r in regions] + parts
            kinds += [defect] * len(parts)
    kept = [k for k, r in enumerate(regions) if r.sum() >= 12]
    shown = pseudo_word(rng) if rng.random() < word_rate else name
    return CorpusItem(image=_as_rgb(picture), name=shown, anomalous=anomalous,
                      regions=[regions[k] for k in kept],
                      region_kinds=[kinds[k] for k in kept])


# -- making a corpus on several cores -------------------------------------------------------
def worker_count() -> int:
    """The cores this process may use: corpus pictures are made on all of them."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _run_chunk(make: Callable[[int], T], indices: list[int]) -> list[T]:
    return [make(index) for index in indices]


def ordered_map(make: Callable[[int], T], indices: Iterable[int], workers: int) -> Iterator[T]:
    """``make(index)`` for each index, in order, on ``workers`` threads.

    Every corpus item is a pure function of its index, so the pictures are the same
    whatever the number of workers; only the time changes. Threads, not processes: the
    work is numpy, scipy, OpenCV and PIL, which let go of the GIL for most of it (1.7x
    on 2 cores of an AMD EPYC), and threads need no picklable task, no ``__main__``
    guard in the caller's script and no fork of a process that runs torch. Chunks are
    handed out a few ahead of the one being read, so a caller that stops early (the SAM
    corpus skips pictures without regions until it has enough) wastes at most those.
    """
    indices = iter(indices)
    chunks = iter(lambda: list(islice(indices, CHUNK)), [])
    if workers < 2:
        for chunk in chunks:
            yield from _run_chunk(make, chunk)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="corpus") as pool:
        pending = deque(pool.submit(_run_chunk, make, chunk)
                        for chunk in islice(chunks, 2 * workers))
        try:
            while pending:
                done = pending.popleft().result()
                pending.extend(pool.submit(_run_chunk, make, chunk)
                               for chunk in islice(chunks, 1))
                yield from done
        finally:
            for future in pending:
                future.cancel()
