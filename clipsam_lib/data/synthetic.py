"""The embedded benchmark: small anomaly datasets built from a seed, the default data.

Real pictures that ship with scikit-image (textures and objects) are varied per image
(crop, flip, small rotation, brightness) and, for the defective test images, given
procedural defects with exact masks: scratches, stains, pits and cut-and-paste patches.
Every change a defect makes stays inside its mask, so the masks are exact.

One dataset is written in the MVTec AD layout (PNG, one single-channel class, 0/255
masks), the other in the raw VisA layout (upper-case .JPG, class-index masks, one
class with palette-mode masks, ``split_csv/1cls.csv``). They use different classes,
so the cross-dataset zero-shot protocol (train on one, test on the other) runs on them.
Two more are written in the MTD layout (grayscale JPEGs in ``MT_<Type>/Imgs/`` with
anti-aliased 0-255 masks beside them, Free images included) and the KSDD2 layout (flat
``train/`` and ``test/`` folders of tall narrow RGB ``NNNNN.png`` with ``NNNNN_GT.png``),
for the generalization table (the MVTec-layout model evaluated on them).

A build is idempotent: ``build_manifest.json`` records the generator version, seed,
scale and every file's sha256; a matching tree is left alone, anything else is rebuilt
in a temporary folder that replaces the old one only once it is complete.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import shutil
import tempfile
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from clipsam_lib import paths
from clipsam_lib.config import ProfileConfig
from clipsam_lib.data import index_dataset
from clipsam_lib.data.io import DatasetError
from clipsam_lib.io_utils import remove_stale_staging, write_json_atomic

GENERATOR_VERSION = 2  # bump whenever the pictures change: old builds are then rebuilt
MANIFEST_NAME = "build_manifest.json"
UNHASHED = {MANIFEST_NAME, "meta.json"}  # derived files, rewritten by the notebook/CLI


@dataclass(frozen=True)
class SynthClass:
    """One class of the benchmark: a scikit-image picture and the defects it gets."""

    name: str
    source: str  # a skimage.data function that loads offline
    kind: str  # "texture" (any crop, both flips) | "object" (centred crop)
    defects: tuple[str, ...]  # defect types, in mask-index order (VisA index k = position + 1)
    size: tuple[int, int]  # (height, width) of the class's images
    grayscale: bool = False  # stored single-channel, like MVTec's grid, screw and zipper
    tint: tuple[float, float, float] | None = None  # colours a grayscale source
    palette_masks: bool = False  # VisA masks saved as palette PNGs


@dataclass(frozen=True)
class Scale:
    """How many classes and images a size preset has (per class).

    MTD has no train split: its Free images are ``test_good``, its defective ones
    ``test_defective``. KSDD2's two folders get (normal, defective) counts of their own,
    with fewer defects than the other sets, as in the real folders.
    """

    classes: int
    train: int  # train normals
    test_good: int
    test_defective: int
    ksdd2_train: tuple[int, int]  # (normal, defective) in KSDD2's train/ folder
    ksdd2_test: tuple[int, int]  # (normal, defective) in KSDD2's test/ folder
    # Image sides multiplied by this per layout (the catalog's sizes are small; the
    # rehearsal preset grows them to the real datasets' sizes).
    zoom: tuple[tuple[str, float], ...] = ()


SCALES = {
    "tiny": Scale(classes=2, train=3, test_good=2, test_defective=3,  # unit tests
                  ksdd2_train=(3, 1), ksdd2_test=(3, 2)),
    "small": Scale(classes=4, train=10, test_good=6, test_defective=10,  # smoke profile
                   ksdd2_train=(12, 4), ksdd2_test=(10, 6)),
    "medium": Scale(classes=4, train=40, test_good=20, test_defective=30,
                    ksdd2_train=(48, 8), ksdd2_test=(40, 12)),
    # The paper's image sizes for a cost rehearsal (rehearsal profile): MVTec-like sides
    # about 650-1020 px, VisA-like about 1.0-1.4k px wide, KSDD2-like about 230 x 620.
    "rehearsal": Scale(classes=2, train=2, test_good=2, test_defective=3,
                       ksdd2_train=(2, 1), ksdd2_test=(2, 2),
                       zoom=(("mvtec", 3.4), ("visa", 4.4), ("mtd", 1.6), ("ksdd2", 2.4))),
}

# MTD's defect types (its folder names), each drawn with the procedural defect it looks
# most like: a blowhole is a hole, a break a piece out of place, crack and fray are lines,
# an uneven surface a blotch of another shade.
MTD_DRAWN_AS = {"Blowhole": "pit", "Break": "patch", "Crack": "scratch", "Fray": "scratch",
                "Uneven": "stain"}

# MVTec and VisA share no class: zero-shot transfer is from one set of classes to another.
CATALOG: dict[str, tuple[SynthClass, ...]] = {
    "mvtec": (
        SynthClass("brick", "brick", "texture", ("scratch", "pit", "patch"), (240, 288),
                   grayscale=True),
        SynthClass("coffee", "coffee", "object", ("stain", "scratch"), (200, 300)),
        SynthClass("tissue", "immunohistochemistry", "texture", ("stain", "pit", "patch"),
                   (256, 224)),
        SynthClass("cat", "chelsea", "object", ("scratch", "stain", "patch"), (192, 288)),
    ),
    "visa": (
        SynthClass("gravel", "gravel", "texture", ("stain", "scratch", "pit"), (224, 300),
                   tint=(0.86, 0.76, 0.62)),
        SynthClass("coins", "coins", "object", ("scratch", "pit"), (240, 304),
                   tint=(0.95, 0.82, 0.58), palette_masks=True),
        SynthClass("rocket", "rocket", "object", ("stain", "patch"), (300, 200)),
        SynthClass("motorcycle", "stereo_motorcycle", "object", ("scratch", "stain", "patch"),
                   (216, 304)),
    ),
    # One class each (the indexers name them "mtd" and "ksdd2"); grass is used by neither
    # of the sets above, so the generalization sets stay unseen by the trained model.
    "mtd": (
        SynthClass("tile", "grass", "texture", tuple(MTD_DRAWN_AS), (184, 236), grayscale=True),
    ),
    "ksdd2": (
        SynthClass("commutator", "grass", "texture", ("scratch", "pit", "stain"), (260, 96),
                   tint=(0.8, 0.74, 0.66)),
    ),
}

# Per-image size variation, +-2 x (height, width) px; MVTec keeps one size per class.
# MTD: 160-208 x 212-260 (varying, never square); KSDD2: 220-300 x 82-110 (tall, narrow).
SIZE_JITTER = {"visa": (8, 8), "mtd": (12, 12), "ksdd2": (20, 7)}

# Blur of the MTD mask edges: anti-aliased like the real masks, so the threshold matters.
# With this sigma the blur keeps every defect pixel above 0 (the kernel's centre weight).
MASK_EDGE_SIGMA = 0.8

STAIN_COLOURS = ((0.45, 0.28, 0.12), (0.18, 0.22, 0.32), (0.62, 0.58, 0.18), (0.55, 0.12, 0.1))


# -- pictures ------------------------------------------------------------------------------
@cache
def _source_picture(name: str) -> np.ndarray:
    """A scikit-image picture as float32 ``H x W x C`` in [0, 1] (C = 1 or 3)."""
    import skimage.data

    picture = getattr(skimage.data, name)()
    if isinstance(picture, tuple):  # stereo_motorcycle returns (left, right, disparity)
        picture = picture[0]
    picture = np.asarray(picture, dtype=np.float32) / 255.0
    if picture.ndim == 2:
        picture = picture[:, :, None]
    return picture[:, :, :3]


def _base_picture(cls: SynthClass) -> np.ndarray:
    picture = _source_picture(cls.source)
    if cls.tint is not None and picture.shape[2] == 1:
        picture = picture * np.asarray(cls.tint, dtype=np.float32)
    if cls.grayscale and picture.shape[2] == 3:
        picture = picture.mean(axis=2, keepdims=True)
    return picture


def _as_3d(array: np.ndarray) -> np.ndarray:
    return array[:, :, None] if array.ndim == 2 else array


def _variation(base: np.ndarray, out_hw: tuple[int, int], kind: str, rng: np.random.Generator):
    """One normal image: rotate a little, crop to the output aspect, flip, resize, jitter."""
    height, width = base.shape[:2]
    out_h, out_w = out_hw
    texture = kind == "texture"
    angle = rng.uniform(-10, 10) if texture else rng.uniform(-4, 4)
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
    rotated = _as_3d(cv2.warpAffine(base, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REFLECT_101))
    crop_h_max = min(height, width * out_h / out_w)
    crop_h = int(crop_h_max * (rng.uniform(0.45, 0.8) if texture else rng.uniform(0.86, 0.98)))
    crop_w = int(crop_h * out_w / out_h)
    if texture:
        y0 = int(rng.integers(0, height - crop_h + 1))
        x0 = int(rng.integers(0, width - crop_w + 1))
    else:  # keep the object in frame: small offsets around the centre
        y0 = int(np.clip((height - crop_h) // 2 + rng.integers(-8, 9), 0, height - crop_h))
        x0 = int(np.clip((width - crop_w) // 2 + rng.integers(-8, 9), 0, width - crop_w))
    crop = rotated[y0:y0 + crop_h, x0:x0 + crop_w]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if texture and rng.random() < 0.5:
        crop = crop[::-1]
    image = _as_3d(cv2.resize(np.ascontiguousarray(crop), (out_w, out_h),
                              interpolation=cv2.INTER_AREA))
    image = image * rng.uniform(0.9, 1.1) + rng.uniform(-0.04, 0.04)
    image = image + rng.normal(0.0, 0.01, image.shape).astype(np.float32)  # sensor noise
    return np.clip(image, 0.0, 1.0).astype(np.float32)


# -- defects: each returns the changed image and an exact mask ------------------------------
def _defect_centre(shape: tuple[int, ...], kind: str, rng: np.random.Generator):
    """A centre inside the picture; objects get their defects on the central part."""
    height, width = shape[:2]
    margin = 0.15 if kind == "texture" else 0.3
    return (rng.uniform(margin, 1 - margin) * height, rng.uniform(margin, 1 - margin) * width)


def _contrasting(image: np.ndarray, mask: np.ndarray, dark: float, bright: float) -> float:
    """A dark value on bright surroundings and vice versa, so the defect stays visible."""
    return dark if float(image[mask].mean()) > 0.45 else bright


def _scratch(image: np.ndarray, kind: str, rng: np.random.Generator):
    height, width = image.shape[:2]
    side = min(height, width)
    cy, cx = _defect_centre(image.shape, kind, rng)
    length = rng.uniform(0.25, 0.45) * side
    theta = rng.uniform(0, np.pi)
    direction = np.array([np.cos(theta), np.sin(theta)])
    normal = np.array([-direction[1], direction[0]])
    centre = np.array([cx, cy])
    start, end = centre - direction * length / 2, centre + direction * length / 2
    bend = centre + normal * rng.uniform(-0.3, 0.3) * length
    t = np.linspace(0, 1, 48)[:, None]
    curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * bend + t**2 * end  # quadratic Bezier
    mask = np.zeros((height, width), np.uint8)
    thickness = int(rng.integers(2, 5))
    cv2.polylines(mask, [np.round(curve).astype(np.int32)], False, 1, thickness, cv2.LINE_8)
    mask = mask.astype(bool)
    value = _contrasting(image, mask, dark=0.08, bright=0.92)
    streak = value + rng.normal(0, 0.04, (int(mask.sum()), 1)).astype(np.float32)
    image[mask] = 0.2 * image[mask] + 0.8 * streak
    return image, mask


def _smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    noise = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return noise / (noise.std() + 1e-6)


def _stain_colour(surroundings: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A stain colour that differs from what it covers (brown on a brown cat is invisible)."""
    colours = np.asarray(STAIN_COLOURS, np.float32)
    if surroundings.shape[0] == 1:
        colours = colours.mean(axis=1, keepdims=True)
    distance = np.abs(colours - surroundings).mean(axis=1)
    distinct = np.flatnonzero(distance > 0.2)
    return colours[rng.choice(distinct) if distinct.size else int(distance.argmax())]


def _stain(image: np.ndarray, kind: str, rng: np.random.Generator):
    height, width = image.shape[:2]
    side = min(height, width)
    cy, cx = _defect_centre(image.shape, kind, rng)
    ry, rx = rng.uniform(0.06, 0.13, size=2) * side
    theta = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    u = (dx * np.cos(theta) + dy * np.sin(theta)) / rx
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / ry
    noise = _smooth_noise((height, width), 0.04 * side, rng)
    mask = np.sqrt(u**2 + v**2) + 0.25 * noise < 1.0  # an irregular blob
    if mask.sum() < 20:
        mask = u**2 + v**2 < 1.0
    colour = _stain_colour(image[mask].mean(axis=0), rng)
    alpha = np.clip(0.6 + 0.1 * noise[mask], 0.4, 0.8)[:, None]
    image[mask] = (1 - alpha) * image[mask] + alpha * colour
    return image, mask


def _pit(image: np.ndarray, kind: str, rng: np.random.Generator):
    height, width = image.shape[:2]
    side = min(height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    mask = np.zeros((height, width), bool)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = _defect_centre(image.shape, kind, rng)
        radius = max(3.0, rng.uniform(0.025, 0.055) * side)
        distance = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        disc = distance <= radius
        depth = distance[disc] / radius  # 0 at the centre, 1 at the rim: a shaded hole
        dark = float(image[disc].mean()) > 0.35
        shade = 0.04 + 0.3 * depth if dark else 0.95 - 0.3 * depth
        image[disc] = shade[:, None].astype(np.float32)
        mask |= disc
    return image, mask


def _patch(image: np.ndarray, kind: str, rng: np.random.Generator):
    """Cut a square from elsewhere in the picture, turn it, change its brightness, paste it.

    Of a few candidate sources the one that differs most from the covered square wins:
    a patch of sky pasted onto sky would be a defect no one could see.
    """
    height, width = image.shape[:2]
    size = int(rng.uniform(0.14, 0.22) * min(height, width))
    cy, cx = _defect_centre(image.shape, kind, rng)
    ty = int(np.clip(cy - size / 2, 0, height - size))
    tx = int(np.clip(cx - size / 2, 0, width - size))
    target = image[ty:ty + size, tx:tx + size]
    turns, gain = int(rng.integers(1, 4)), float(rng.choice([0.65, 1.35]))
    best, best_difference = None, -1.0
    for _ in range(8):
        sy, sx = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
        if abs(sy - ty) < size and abs(sx - tx) < size:
            continue  # overlaps the target
        piece = np.clip(np.rot90(image[sy:sy + size, sx:sx + size], k=turns) * gain, 0.0, 1.0)
        difference = float(np.abs(piece - target).mean())
        if difference > best_difference:
            best, best_difference = piece, difference
    if best is None:  # no room for a separate source: turn the target itself
        best = np.clip(np.rot90(target, k=turns) * gain, 0.0, 1.0)
    image[ty:ty + size, tx:tx + size] = best
    mask = np.zeros((height, width), bool)
    mask[ty:ty + size, tx:tx + size] = True
    return image, mask


DEFECTS: dict[str, Callable] = {
    "scratch": _scratch, "stain": _stain, "pit": _pit, "patch": _patch,
}


def defect_procedure(defect: str) -> Callable:
    """The procedure drawing ``defect``: a DEFECTS name, or an MTD type drawn as one."""
    return DEFECTS[MTD_DRAWN_AS.get(defect, defect)]


# -- one class's images -------------------------------------------------------------------
@dataclass
class Sample:
    image: np.ndarray  # uint8 H x W x C
    defect: str  # "" for a normal image
    mask: np.ndarray | None  # bool H x W


def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    """A generator per (seed, dataset, class, role, index): images do not depend on order."""
    words = [seed] + [k if isinstance(k, int) else zlib.crc32(k.encode()) for k in keys]
    return np.random.default_rng(words)


def _image_size(cls: SynthClass, layout: str, rng: np.random.Generator) -> tuple[int, int]:
    """The class's size, varied per image in the layouts whose real images vary."""
    height, width = cls.size
    if layout in SIZE_JITTER:  # no draw for MVTec: its images keep their bytes
        jitter_h, jitter_w = SIZE_JITTER[layout]
        height += 2 * int(rng.integers(-jitter_h, jitter_h + 1))
        width += 2 * int(rng.integers(-jitter_w, jitter_w + 1))
    return height, width


def _make_sample(cls: SynthClass, layout: str, seed: int, role: str, i: int, defect: str = ""):
    rng = _rng(seed, layout, cls.name, role, i)
    picture = _variation(_base_picture(cls), _image_size(cls, layout, rng), cls.kind, rng)
    mask = None
    if defect:
        picture, mask = defect_procedure(defect)(picture, cls.kind, rng)
    image = np.round(np.clip(picture, 0, 1) * 255).astype(np.uint8)
    return Sample(image=image, defect=defect, mask=mask)


def _defect_plan(cls: SynthClass, count: int) -> list[str]:
    """Defect types for ``count`` images, round robin (e.g. 10 over 3 types: 4/3/3)."""
    return [cls.defects[i % len(cls.defects)] for i in range(count)]


# -- writers -------------------------------------------------------------------------------
def _png_bytes(array: np.ndarray, palette: bool = False) -> bytes:
    """PNG bytes of a uint8 array (2-D or H x W x 1/3); ``palette`` stores a P-mode index map."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if palette:
        image = Image.frombytes("P", (array.shape[1], array.shape[0]), array.tobytes())
        # Index k is drawn as (k, 0, 0): the mask looks black, and a palette -> grey
        # conversion turns index 1 into 0, which is exactly what a reader must not do.
        image.putpalette([v for k in range(256) for v in (k, 0, 0)])
    else:
        image = Image.fromarray(np.ascontiguousarray(array))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jpg_bytes(array: np.ndarray, *, grayscale: bool = False) -> bytes:
    """JPEG bytes; single-channel arrays become colour (VisA) unless ``grayscale`` (MTD)."""
    if array.shape[2] == 1:
        array = array[:, :, 0] if grayscale else np.repeat(array, 3, axis=2)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _binary_mask(sample: Sample) -> np.ndarray:
    """The 0/255 mask; all zero for a normal image (MTD and KSDD2 store one for every image)."""
    if sample.mask is None:
        return np.zeros(sample.image.shape[:2], np.uint8)
    return sample.mask.astype(np.uint8) * 255


def _antialiased_mask(sample: Sample) -> np.ndarray:
    """The 0-255 mask with blurred edges, like MTD's: ``> 0`` covers every defect pixel."""
    soft = gaussian_filter(_binary_mask(sample).astype(np.float32), MASK_EDGE_SIGMA)
    return np.round(soft).astype(np.uint8)


def _write(root: Path, relative: str, data: bytes, written: dict[str, str]) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    written[relative] = hashlib.sha256(data).hexdigest()


def _write_mvtec(root: Path, classes: tuple[SynthClass, ...], scale: Scale, seed: int):
    written: dict[str, str] = {}
    for cls in classes:
        for i in range(scale.train):
            sample = _make_sample(cls, "mvtec", seed, "train", i)
            _write(root, f"{cls.name}/train/good/{i:03d}.png", _png_bytes(sample.image), written)
        for i in range(scale.test_good):
            sample = _make_sample(cls, "mvtec", seed, "good", i)
            _write(root, f"{cls.name}/test/good/{i:03d}.png", _png_bytes(sample.image), written)
        per_defect: dict[str, int] = {}
        for i, defect in enumerate(_defect_plan(cls, scale.test_defective)):
            sample = _make_sample(cls, "mvtec", seed, "defect", i, defect)
            j = per_defect[defect] = per_defect.get(defect, -1) + 1
            _write(root, f"{cls.name}/test/{defect}/{j:03d}.png", _png_bytes(sample.image), written)
            _write(root, f"{cls.name}/ground_truth/{defect}/{j:03d}_mask.png",
                   _png_bytes(_binary_mask(sample)), written)
    return written


def _write_visa(root: Path, classes: tuple[SynthClass, ...], scale: Scale, seed: int):
    written: dict[str, str] = {}
    rows = [["object", "split", "label", "image", "mask"]]
    for cls in classes:
        n_normal = scale.train + scale.test_good
        test_normals = set(_rng(seed, "visa", cls.name, "split").permutation(n_normal)[
            :scale.test_good].tolist())
        for i in range(n_normal):
            sample = _make_sample(cls, "visa", seed, "normal", i)
            image = f"{cls.name}/Data/Images/Normal/{i:04d}.JPG"
            _write(root, image, _jpg_bytes(sample.image), written)
            rows.append([cls.name, "test" if i in test_normals else "train", "normal", image, ""])
        for i, defect in enumerate(_defect_plan(cls, scale.test_defective)):
            sample = _make_sample(cls, "visa", seed, "defect", i, defect)
            image = f"{cls.name}/Data/Images/Anomaly/{i:03d}.JPG"
            mask = f"{cls.name}/Data/Masks/Anomaly/{i:03d}.png"
            index_map = sample.mask.astype(np.uint8) * (cls.defects.index(defect) + 1)
            _write(root, image, _jpg_bytes(sample.image), written)
            _write(root, mask, _png_bytes(index_map, palette=cls.palette_masks), written)
            rows.append([cls.name, "test", "anomaly", image, mask])
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    _write(root, "split_csv/1cls.csv", text.getvalue().encode(), written)
    return written


def _test_plan(cls: SynthClass, scale: Scale) -> list[tuple[str, int, str]]:
    """(role, index, defect) of a class's test images: the normals, then the defective ones."""
    normals = [("good", i, "") for i in range(scale.test_good)]
    defects = _defect_plan(cls, scale.test_defective)
    return normals + [("defect", i, defect) for i, defect in enumerate(defects)]


def _write_mtd(root: Path, classes: tuple[SynthClass, ...], scale: Scale, seed: int):
    """``MT_<Type>/Imgs/exp1_num_NNNNN.jpg`` (grayscale) with its anti-aliased mask beside it."""
    (cls,) = classes
    written: dict[str, str] = {}
    for number, (role, i, defect) in enumerate(_test_plan(cls, scale)):
        sample = _make_sample(cls, "mtd", seed, role, i, defect)
        stem = f"MT_{defect or 'Free'}/Imgs/exp1_num_{number:05d}"  # stems unique over folders
        _write(root, f"{stem}.jpg", _jpg_bytes(sample.image, grayscale=True), written)
        _write(root, f"{stem}.png", _png_bytes(_antialiased_mask(sample)), written)
    return written


def _write_ksdd2(root: Path, classes: tuple[SynthClass, ...], scale: Scale, seed: int):
    """Flat ``train/`` and ``test/``: ``NNNNN.png`` (RGB) and ``NNNNN_GT.png`` (0/255)."""
    (cls,) = classes
    written: dict[str, str] = {}
    for folder, (n_normal, n_defective) in (("train", scale.ksdd2_train),
                                            ("test", scale.ksdd2_test)):
        defects = [""] * n_normal + _defect_plan(cls, n_defective)
        # Numbered in a shuffled order: defective images sit among the normal ones, as in
        # the real folders, so nothing can be learnt from a file's number.
        order = _rng(seed, "ksdd2", cls.name, folder, "order").permutation(len(defects))
        for number, i in enumerate(order.tolist()):
            sample = _make_sample(cls, "ksdd2", seed, folder, i, defects[i])
            _write(root, f"{folder}/{number:05d}.png", _png_bytes(sample.image), written)
            _write(root, f"{folder}/{number:05d}_GT.png", _png_bytes(_binary_mask(sample)),
                   written)
    return written


WRITERS = {"mvtec": _write_mvtec, "visa": _write_visa, "mtd": _write_mtd, "ksdd2": _write_ksdd2}

LAYOUT_NOTES = {  # README lines of the layouts that need them
    "mtd": ("MTD types drawn as: " + ", ".join(f"{t} = {d}" for t, d in MTD_DRAWN_AS.items()),
            (f"Masks anti-aliased (Gaussian edge, sigma {MASK_EDGE_SIGMA} px): value > 0 "
             "covers every defect pixel plus a soft rim of a few px."),
            "Every image has a mask; the Free ones are all zero."),
    "ksdd2": ("Defective images in both folders; every image has a 0/255 NNNNN_GT.png mask.",),
}


def _readme(layout: str, classes: tuple[SynthClass, ...], scale_name: str, seed: int) -> bytes:
    lines = [
        (f"Embedded benchmark ({layout} layout), built by clipsam_lib.data.synthetic "
         f"v{GENERATOR_VERSION}, seed {seed}, scale {scale_name!r}."),
        "Pictures: scikit-image sample data (see skimage.data for their sources and licences),",
        "varied per image; defects are procedural and their masks exact. Not real data:",
        "numbers measured on it say nothing about the paper's claims.",
        "",
        *(f"{c.name}: skimage.data.{c.source}, {c.kind}, defects {', '.join(c.defects)}"
          for c in classes),
        *LAYOUT_NOTES.get(layout, ()),
    ]
    return ("\n".join(lines) + "\n").encode()


# -- build, verify, swap into place --------------------------------------------------------
def _manifest_header(layout: str, seed: int, scale_name: str) -> dict:
    return {"generator": "clipsam_lib.data.synthetic", "version": GENERATOR_VERSION,
            "layout": layout, "seed": seed, "scale": scale_name}


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def is_up_to_date(root: Path, layout: str, seed: int, scale_name: str) -> bool:
    """Whether ``root`` holds exactly this build: same header and every file's hash."""
    manifest_path = root / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return False
    if {k: manifest.get(k) for k in ("generator", "version", "layout", "seed", "scale")} != \
            _manifest_header(layout, seed, scale_name):
        return False
    files = manifest.get("files", {})
    return bool(files) and all(
        (root / rel).is_file() and _file_sha256(root / rel) == digest
        for rel, digest in files.items()
    )


def _check_replaceable(root: Path) -> None:
    """Refuse to replace a folder this generator did not write (it may be real data)."""
    if root.is_dir() and any(root.iterdir()) and not (root / MANIFEST_NAME).is_file():
        raise DatasetError(
            f"{root} exists and was not built by the synthetic generator (no {MANIFEST_NAME}); "
            f"move it away or point the profile's dataset root elsewhere."
        )


def _swap_into_place(new: Path, root: Path) -> None:
    """Rename the finished build onto ``root``; the old tree is removed only afterwards."""
    old = None
    if root.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        os.replace(root, old / root.name)
    os.replace(new, root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_dataset(
    root: str | Path, layout: str, seed: int = 0, scale: str = "small", *, force: bool = False
) -> Path:
    """Build (or verify) one synthetic dataset at ``root`` in ``layout`` (a WRITERS key).

    Nothing happens when ``root`` already holds this exact build (manifest and hashes
    match) unless ``force``. Otherwise the tree is written to a temporary folder beside
    ``root``, indexed (meta.json; for KSDD2 the official test split), and renamed onto
    ``root``: an interrupted build leaves the previous tree as it was.
    """
    root = Path(root).expanduser()
    if layout not in WRITERS:
        raise DatasetError(f"Synthetic datasets come in the {', '.join(WRITERS)} layouts, "
                           f"not {layout!r}; fix the profile's dataset layout.")
    if scale not in SCALES:
        raise DatasetError(f"Synthetic scale {scale!r} is unknown; use one of "
                           f"{', '.join(SCALES)} (profile field synthetic_scale).")
    if not force and is_up_to_date(root, layout, seed, scale):
        return root
    for line in remove_stale_staging(root):
        warnings.warn(f"removed {line}", stacklevel=2)
    _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    zoom = dict(SCALES[scale].zoom).get(layout, 1.0)
    classes = tuple(
        dataclasses.replace(c, size=(round(c.size[0] * zoom), round(c.size[1] * zoom)))
        for c in CATALOG[layout][:SCALES[scale].classes]
    )
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.build-", dir=root.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would otherwise become the dataset's mode
    try:
        files = WRITERS[layout](staging, classes, SCALES[scale], seed)
        _write(staging, "README.txt", _readme(layout, classes, scale, seed), files)
        write_json_atomic(staging / "meta.json", index_dataset(staging, layout))
        manifest = {**_manifest_header(layout, seed, scale), "files": dict(sorted(files.items()))}
        write_json_atomic(staging / MANIFEST_NAME, manifest)
        _swap_into_place(staging, root)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return root


def build_embedded_benchmark(profile: ProfileConfig, *, force: bool = False) -> dict[str, Path]:
    """Build every ``synthetic: true`` dataset of ``profile`` at its dataset root.

    Uses ``profile.synthetic_seed`` and ``profile.synthetic_scale``; returns
    ``{dataset name: root}``. Idempotent (see ``build_dataset``).
    """
    roots = {}
    for spec in profile.datasets:
        if spec.synthetic:
            root = paths.dataset_root(profile, spec.name)
            roots[spec.name] = build_dataset(root, spec.layout, profile.synthetic_seed,
                                             profile.synthetic_scale, force=force)
    return roots
