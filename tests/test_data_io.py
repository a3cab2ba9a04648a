"""read_image_rgb / read_mask: every mode becomes RGB uint8 / bool, bad files fail clearly."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clipsam_lib.data.io import (
    DatasetError,
    check_mask_matches,
    image_size,
    read_image_rgb,
    read_mask,
)


def _save(path, image: Image.Image):
    image.save(path)
    return path


@pytest.fixture
def gray():
    return np.arange(12, dtype=np.uint8).reshape(3, 4) * 20


def test_grayscale_becomes_rgb(tmp_path, gray):
    path = _save(tmp_path / "g.png", Image.fromarray(gray))
    rgb = read_image_rgb(path)
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(rgb[:, :, channel], gray)


def test_rgba_and_palette_become_rgb(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 17
    out = read_image_rgb(_save(tmp_path / "a.png", Image.fromarray(rgba)))
    assert out.shape == (2, 3, 3) and (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()
    palette = Image.frombytes("P", (3, 2), bytes([0, 1, 1, 0, 0, 1]))
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    out = read_image_rgb(_save(tmp_path / "p.png", palette))
    np.testing.assert_array_equal(out[0, 1], [200, 100, 50])
    np.testing.assert_array_equal(out[1, 0], [10, 20, 30])


def test_sixteen_bit_gray_is_scaled_to_uint8(tmp_path):
    values = np.array([[0, 1000], [30000, 65535]], np.uint16)
    out = read_image_rgb(_save(tmp_path / "16.png", Image.fromarray(values)))
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0, 0] == 0 and out[1, 1, 0] == 255 and out[0, 1, 0] < out[1, 0, 0]


def test_rgb_jpeg_round_trip(tmp_path):
    pixels = np.full((8, 10, 3), (200, 40, 90), np.uint8)
    out = read_image_rgb(_save(tmp_path / "x.JPG", Image.fromarray(pixels)))
    assert out.shape == (8, 10, 3) and np.abs(out.astype(int) - pixels).max() <= 3


def test_palette_mask_uses_raw_indices(tmp_path):
    """VisA-style index map whose palette draws index 1 as (1, 0, 0): grey conversion -> 0."""
    indices = np.array([[0, 1, 2], [0, 0, 1]], np.uint8)
    mask = Image.frombytes("P", (3, 2), indices.tobytes())
    mask.putpalette([v for k in range(256) for v in (k, 0, 0)])
    path = _save(tmp_path / "m.png", mask)
    converted = np.asarray(Image.open(path).convert("L"))
    assert not converted[indices == 1].any()  # the trap is real: index 1 turns into 0
    out = read_mask(path)
    assert out.dtype == bool
    np.testing.assert_array_equal(out, indices != 0)


def test_mask_threshold_on_raw_values(tmp_path):
    values = np.array([[0, 1, 37], [128, 254, 255]], np.uint8)
    path = _save(tmp_path / "soft.png", Image.fromarray(values))
    np.testing.assert_array_equal(read_mask(path), values > 0)
    np.testing.assert_array_equal(read_mask(path, threshold=127), values > 127)
    np.testing.assert_array_equal(read_mask(path, threshold=254.5), values > 254.5)


def test_three_channel_mask_raw_uses_the_largest_colour_channel(tmp_path):
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0, 0] = 255
    rgb[1, 1, 2] = 255  # only in blue: still a marked pixel
    out = read_mask(_save(tmp_path / "rgb_mask.png", Image.fromarray(rgb)))
    np.testing.assert_array_equal(out, [[True, False], [False, True]])


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match=r"nope.png does not exist; re-download"):
        read_image_rgb(tmp_path / "nope.png")
    with pytest.raises(DatasetError, match="does not exist"):
        read_mask(tmp_path / "nope.png")
    with pytest.raises(DatasetError, match="does not exist"):
        image_size(tmp_path / "nope.png")


def test_corrupt_and_truncated_files(tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"definitely not an image")
    with pytest.raises(DatasetError, match=f"{garbage} is corrupt or not an image"):
        read_image_rgb(garbage)
    with pytest.raises(DatasetError, match="corrupt"):
        image_size(garbage)
    full = _save(tmp_path / "full.png", Image.fromarray(np.random.default_rng(0).integers(
        0, 255, (64, 64, 3), dtype=np.uint8)))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(full.read_bytes()[:300])  # valid header, missing pixel data
    assert image_size(truncated) == (64, 64)
    with pytest.raises(DatasetError, match=f"{truncated} is corrupt") as err:
        read_image_rgb(truncated)
    assert "\n" not in str(err.value)


def test_check_mask_matches(tmp_path):
    check_mask_matches((4, 5, 3), np.zeros((4, 5), bool), tmp_path / "ok.png")
    with pytest.raises(DatasetError, match=r"Mask .*m.png is 5x3 px but its image is 5x4 px"):
        check_mask_matches((4, 5, 3), np.zeros((3, 5), bool), tmp_path / "m.png")
