"""Reading dataset files: images as RGB uint8, masks as bool, clear errors on bad files.

Every failure a user can cause (a missing file, a corrupt image, a mask that belongs to
another image) becomes a one-sentence ``DatasetError`` naming the file and the fix.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from clipsam_lib.config import CHOICES
from clipsam_lib.errors import UserError


class DatasetError(UserError, ValueError):
    """A problem with dataset files the user can fix; the message names the path and the fix."""


_REINDEX = "re-download the dataset or rebuild its index with `clipsam index`"


def _open(path: str | Path) -> Image.Image:
    """Open an image and decode it fully, translating PIL's errors into DatasetError."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"Image file {path} does not exist; {_REINDEX}.")
    try:
        image = Image.open(path)
        image.load()  # decode now: a truncated file fails here, not later in a model
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DatasetError(
            f"Image file {path} is corrupt or not an image ({type(err).__name__}); "
            f"{_REINDEX}."
        ) from None
    return image


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` read from the file header only (cheap enough for indexing)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"Image file {path} does not exist; {_REINDEX}.")
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DatasetError(
            f"Image file {path} is corrupt or not an image ({type(err).__name__}); "
            f"{_REINDEX}."
        ) from None


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale a 16-bit or float grayscale array to uint8 (rare, but some TIFF/PNG are)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    top = float(array.max()) if array.size else 0.0
    scale = 255.0 / top if top > 255 else 1.0
    return np.clip(array.astype(np.float64) * scale, 0, 255).astype(np.uint8)


def read_image_rgb(path: str | Path) -> np.ndarray:
    """The image at ``path`` as an ``H x W x 3`` uint8 RGB array.

    Grayscale (MVTec grid/screw/zipper, MTD, KSDD2), palette and RGBA images are
    converted to RGB, so every model sees three channels.
    """
    image = _open(path)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        gray = _to_uint8(np.asarray(image))
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL warns when converting such palettes directly
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


MASK_BINARIZATIONS = CHOICES["eval.mask_binarization"]


def read_mask(path: str | Path, threshold: float = 0.0, binarization: str = "raw") -> np.ndarray:
    """The mask at ``path`` as a bool ``H x W`` array: ``value > threshold``.

    ``binarization`` says what the value is (``eval.mask_binarization``):

    - "raw": the stored values. VisA masks are class-index maps (values 1..K that look
      black), sometimes palette PNGs whose palette would map them to other values, so the
      indices are read, not the colours; MTD masks are anti-aliased 0-255; RGB(A) masks use
      their largest colour channel (alpha ignored).
    - "luminance": PIL's ``convert("L")`` first, as APRIL-GAN (peer): a palette index goes
      through its palette colour, RGB through 0.299 R + 0.587 G + 0.114 B (rounded), so a
      dark palette colour or RGB value becomes 0. A warning names the file when that drops
      pixels the stored values mark.
    """
    if binarization not in MASK_BINARIZATIONS:
        raise ValueError(
            f"eval.mask_binarization must be one of {MASK_BINARIZATIONS}, not {binarization!r}."
        )
    image = _open(path)
    array = np.asarray(image)  # palette images give their indices, not colours
    if array.ndim == 3:
        array = array[:, :, :3].max(axis=2)
    raw = array > threshold
    if binarization == "raw":
        return raw
    luminance = np.asarray(image.convert("L")) > threshold
    lost = int(raw.sum()) - int((raw & luminance).sum())
    if lost:
        warnings.warn(
            f"Mask {path}: the peer's luminance binarization drops {lost} of {int(raw.sum())} "
            f"pixels its stored values mark (mode {image.mode}); eval.mask_binarization: raw "
            "keeps them.",
            stacklevel=2,
        )
    return luminance


def mask_size_error(
    path: str | Path, mask_hw: tuple[int, int], image_hw: tuple[int, int]
) -> DatasetError:
    """The DatasetError for a mask whose size differs from its image's."""
    (mh, mw), (ih, iw) = mask_hw, image_hw
    return DatasetError(
        f"Mask {path} is {mw}x{mh} px but its image is {iw}x{ih} px, so it belongs to "
        f"another image; {_REINDEX}."
    )


def check_mask_matches(image_shape: tuple[int, ...], mask: np.ndarray, path: str | Path) -> None:
    """Raise DatasetError when ``mask`` (read from ``path``) is not the size of its image."""
    if tuple(mask.shape[:2]) != tuple(image_shape[:2]):
        raise mask_size_error(path, mask.shape[:2], image_shape[:2])
