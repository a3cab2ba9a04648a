"""MMR: prompts on hand-made maps, SAM's coordinate frame, fusion A/B/C by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from clipsam_lib.config import MMRConfig, SamConfig
from clipsam_lib.modeling import mmr
from clipsam_lib.modeling.mmr import Prompts, decode_masks, extract_prompts, fuse, refine
from clipsam_lib.modeling.sam_backbone import SamBackbone


def cfg(**changes) -> MMRConfig:
    return MMRConfig(**{**MMRConfig().__dict__, **changes})


# -- prompts ----------------------------------------------------------------------------


def test_two_blobs_give_two_boxes_and_points_at_their_maxima():
    score = np.zeros((20, 30), np.float32)
    score[2:6, 3:8] = 0.7
    score[4, 6] = 0.9  # peak of blob 1 at (x=6, y=4)
    score[10:17, 20:26] = 0.6
    score[15, 21] = 0.95  # peak of blob 2 at (x=21, y=15)
    binary, prompts = extract_prompts(score, cfg())
    assert binary.sum() == 4 * 5 + 7 * 6
    np.testing.assert_array_equal(prompts.boxes, [[3, 2, 7, 5], [20, 10, 25, 16]])
    np.testing.assert_array_equal(prompts.points, [[6, 4], [21, 15]])
    np.testing.assert_array_equal(prompts.labels, [1, 1])
    np.testing.assert_array_equal(prompts.areas, [20, 42])
    for (x, y), (x0, y0, x1, y1) in zip(prompts.points, prompts.boxes):
        assert x0 <= x <= x1 and y0 <= y <= y1


def test_ring_point_lies_inside_the_ring_not_at_its_centroid():
    yy, xx = np.mgrid[:41, :41]
    radius = np.hypot(yy - 20, xx - 20)
    # A ring whose values rise towards a point on its lower-right side.
    score = np.where((radius > 10) & (radius < 15), 0.6 + 0.01 * (xx + yy) / 80, 0.0)
    binary, prompts = extract_prompts(score.astype(np.float32), cfg())
    assert len(prompts) == 1
    x, y = prompts.points[0].astype(int)
    assert binary[y, x]
    assert not binary[20, 20]  # the centroid is in the hole
    assert score[y, x] == score[binary].max()


def test_relative_threshold_scales_theta_by_each_maps_maximum():
    score = np.zeros((10, 12), np.float32)
    score[1:3, 1:3] = 2e-3  # far below an absolute theta of 0.5
    score[6:9, 7:10] = 1e-3
    assert not extract_prompts(score, cfg())[0].any()
    binary, prompts = extract_prompts(score, cfg(threshold_mode="relative", threshold=0.4))
    assert binary.sum() == 4 + 9 and len(prompts) == 2  # 1e-3 > 0.4 * 2e-3
    binary, prompts = extract_prompts(score, cfg(threshold_mode="relative", threshold=0.6))
    assert binary.sum() == 4 and len(prompts) == 1
    zero = np.zeros((5, 5), np.float32)
    assert len(extract_prompts(zero, cfg(threshold_mode="relative"))[1]) == 0
    with pytest.raises(ValueError, match="threshold_mode"):
        extract_prompts(score, cfg(threshold_mode="quantile"))


def test_ties_resolve_to_the_first_pixel_in_raster_order():
    score = np.zeros((10, 10), np.float32)
    score[3:6, 4:8] = 0.8
    _, prompts = extract_prompts(score, cfg())
    np.testing.assert_array_equal(prompts.points, [[4, 3]])


def test_eight_connectivity_joins_diagonal_neighbours():
    score = np.zeros((6, 6), np.float32)
    score[1, 1] = score[2, 2] = score[3, 3] = 1.0
    _, prompts = extract_prompts(score, cfg())
    np.testing.assert_array_equal(prompts.boxes, [[1, 1, 3, 3]])


def test_min_area_drops_small_blobs_and_max_regions_keeps_the_largest():
    score = np.zeros((20, 20), np.float32)
    score[1:3, 1:3] = 0.9  # 4 px
    score[10:15, 10:15] = 0.8  # 25 px
    score[1:4, 15:19] = 0.7  # 12 px
    _, prompts = extract_prompts(score, cfg(min_area=5))
    np.testing.assert_array_equal(prompts.areas, [12, 25])
    _, prompts = extract_prompts(score, cfg(max_regions=2))
    np.testing.assert_array_equal(prompts.areas, [12, 25])  # raster order kept


def test_box_margin_is_clipped_to_the_image():
    score = np.zeros((10, 12), np.float32)
    score[0:3, 8:12] = 0.9  # touches the top and right borders
    score[5:7, 2:4] = 0.9
    _, prompts = extract_prompts(score, cfg(box_margin=3))
    np.testing.assert_array_equal(prompts.boxes, [[5, 0, 11, 5], [0, 2, 6, 9]])


def test_threshold_is_strict():
    score = np.full((4, 4), 0.5, np.float32)
    binary, prompts = extract_prompts(score, cfg(threshold=0.5))
    assert not binary.any() and len(prompts) == 0


# -- SAM decoding -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def backbone() -> SamBackbone:
    return SamBackbone(SamConfig(model_type="tiny", checkpoint=None, seed=0))


@pytest.fixture(scope="module")
def scene():
    """A non-square image (H=120, W=200), its embedding and a 2-region rough map."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(120, 200, 3), dtype=np.uint8)
    score = np.zeros((120, 200), np.float32)
    score[10:40, 20:70] = 0.8
    score[25, 40] = 0.95
    score[70:110, 120:190] = 0.7
    score[100, 180] = 0.9
    return image, score


@pytest.fixture(scope="module")
def embedding(backbone, scene):
    return backbone.embed(scene[0])


def _capture_prompt_encoder_inputs(sam, monkeypatch) -> list[dict]:
    calls: list[dict] = []
    original = sam.prompt_encoder.forward

    def spy(points, boxes, masks):
        calls.append({"points": points, "boxes": boxes})
        return original(points, boxes, masks)

    monkeypatch.setattr(sam.prompt_encoder, "forward", spy)
    return calls


def test_prompts_reach_sam_in_its_frame(backbone, scene, embedding, monkeypatch):
    _, score = scene
    _, prompts = extract_prompts(score, cfg())
    calls = _capture_prompt_encoder_inputs(backbone.model, monkeypatch)
    decode_masks(backbone.model, embedding, prompts, batching="batched")
    reference = SamPredictor(backbone.model).transform
    coords, labels = calls[0]["points"]
    expected_coords = reference.apply_coords(prompts.points, (120, 200))
    expected_boxes = reference.apply_boxes(prompts.boxes, (120, 200))
    np.testing.assert_allclose(coords[:, 0].numpy(), expected_coords, rtol=1e-6)
    np.testing.assert_allclose(calls[0]["boxes"].numpy(), expected_boxes, rtol=1e-6)
    # By hand: (120, 200) -> (614, 1024), so x scales by 1024/200 and y by 614/120.
    np.testing.assert_allclose(coords[0, 0].numpy(), [40 * 1024 / 200, 25 * 614 / 120],
                               rtol=1e-6)
    assert labels.tolist() == [[1], [1]]


@pytest.mark.parametrize("mode, has_points, has_boxes",
                         [("point", True, False), ("box", False, True),
                          ("point+box", True, True)])
def test_prompt_modes(backbone, scene, embedding, monkeypatch, mode, has_points, has_boxes):
    _, prompts = extract_prompts(scene[1], cfg(prompt_mode=mode))
    calls = _capture_prompt_encoder_inputs(backbone.model, monkeypatch)
    decode_masks(backbone.model, embedding, prompts, batching="batched")
    assert (calls[0]["points"] is not None) == has_points
    assert (calls[0]["boxes"] is not None) == has_boxes


def test_masks_and_scores_equal_sam_predictor(backbone, scene, embedding):
    image, score = scene
    _, prompts = extract_prompts(score, cfg())
    masks, scores = decode_masks(backbone.model, embedding, prompts, batching="per_prompt")
    assert masks.shape == (2, 3, 120, 200) and masks.dtype == bool
    predictor = SamPredictor(backbone.model)
    predictor.set_image(image)
    for i in range(len(prompts)):
        ref_masks, ref_scores, _ = predictor.predict(
            point_coords=prompts.points[i : i + 1], point_labels=np.array([1]),
            box=prompts.boxes[i], multimask_output=True,
        )
        order = np.argsort(-ref_scores, kind="stable")
        np.testing.assert_allclose(scores[i], ref_scores[order], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(masks[i], ref_masks[order])
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_batched_and_per_prompt_decoding_agree(backbone, scene, embedding):
    _, prompts = extract_prompts(scene[1], cfg())
    m1, s1 = decode_masks(backbone.model, embedding, prompts, batching="batched")
    m2, s2 = decode_masks(backbone.model, embedding, prompts, batching="per_prompt")
    np.testing.assert_allclose(s1, s2, rtol=1e-4, atol=1e-5)
    assert (m1 != m2).mean() < 1e-4  # float summation order may flip a boundary pixel


def test_auto_batching_resolves_per_device():
    assert mmr.resolve_batching("auto", "cpu") == mmr.AUTO_BATCHING["cpu"]
    assert mmr.resolve_batching("batched", "cpu") == "batched"
    with pytest.raises(ValueError, match="decoder_batching"):
        mmr.resolve_batching("sometimes", "cpu")


def test_empty_binary_map_returns_the_clip_map_without_decoding(backbone, embedding,
                                                                 monkeypatch):
    def no_decode(*args, **kwargs):
        raise AssertionError("decoder called without prompts")

    monkeypatch.setattr(mmr, "_decode", no_decode)
    rough = np.random.default_rng(2).uniform(0, 0.4, size=(120, 200)).astype(np.float32)
    result = refine(backbone.model, embedding, rough, cfg())
    assert len(result.prompts) == 0 and result.masks.shape == (0, 3, 120, 200)
    np.testing.assert_array_equal(result.final_map, rough)


def test_refine_works_from_a_low_resolution_rough_map(backbone, scene, embedding):
    low = torch.nn.functional.interpolate(torch.from_numpy(scene[1])[None, None],
                                          size=(32, 32), mode="bilinear")[0, 0].numpy()
    result = refine(backbone.model, embedding, low, cfg())
    assert result.clip_map.shape == result.final_map.shape == (120, 200)
    assert len(result.prompts) >= 1
    assert result.final_map.dtype == np.float32
    assert 0.0 <= result.final_map.min() and result.final_map.max() <= 1.0
    outside = ~result.masks.any(axis=(0, 1))
    np.testing.assert_array_equal(result.final_map[outside], result.clip_map[outside])


# -- fusion -----------------------------------------------------------------------------

# One row of 5 pixels; region 1 and region 2, three levels each, already sorted by score.
CLIP = np.array([[0.2, 0.4, 0.6, 0.8, 0.1]], np.float32)
MASKS = np.array(
    [
        [[[1, 1, 0, 0, 0]], [[1, 0, 0, 0, 0]], [[0, 1, 1, 0, 0]]],
        [[[0, 0, 0, 1, 0]], [[0, 0, 0, 1, 0]], [[0, 0, 0, 0, 0]]],
    ],
    bool,
)
SCORES = np.array([[0.8, 0.4, 0.2], [0.6, 0.3, -0.1]], np.float32)


def _softmax(values):
    e = [math.exp(v) for v in values]
    return [x / sum(e) for x in e]


def test_fusion_a_by_hand():
    w1, w2 = _softmax([0.8, 0.4, 0.2]), _softmax([0.6, 0.3, -0.1])
    m_sam = [w1[0] + w1[1], w1[0] + w1[2], w1[2], w2[0] + w2[1]]
    expected = [0.5 * c + 0.5 * m for c, m in zip([0.2, 0.4, 0.6, 0.8], m_sam)] + [0.1]
    out = fuse(CLIP, MASKS, SCORES, cfg(fusion="A", fusion_lambda=0.5))
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)


def test_fusion_b_by_hand():
    # U1 = [1,1,0,1,0], U2 = [1,0,0,1,0], U3 = [0,1,1,0,0]; s = [1.5, 1.25, 0.25, 1.5, 0]
    expected = [1.7 / 2.5, 1.65 / 2.25, 0.85 / 1.25, 2.3 / 2.5, 0.1]
    out = fuse(CLIP, MASKS, SCORES, cfg(fusion="B", level_weights=(1.0, 0.5, 0.25)))
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)


def test_fusion_c_by_hand():
    # s = [0.8+0.4, 0.8+0.2, 0.2, 0.6+0.3, 0]; the negative score is clipped to 0.
    expected = [1.4 / 2.2, 1.4 / 2.0, 0.8 / 1.2, 1.7 / 1.9, 0.1]
    out = fuse(CLIP, MASKS, SCORES, cfg(fusion="C"))
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)


def test_mask_levels_use_only_the_top_masks():
    # Level 1 only: U1 = [1,1,0,1,0]; pixel 2 is only in a level-3 mask and keeps 0.6.
    out = fuse(CLIP, MASKS, SCORES, cfg(fusion="B", mask_levels=1))
    np.testing.assert_allclose(out[0], [1.2 / 2, 1.4 / 2, 0.6, 1.8 / 2, 0.1], rtol=1e-6)
    out = fuse(CLIP, MASKS, SCORES, cfg(fusion="A", mask_levels=1, fusion_lambda=0.5))
    np.testing.assert_allclose(out[0], [0.6, 0.7, 0.6, 0.9, 0.1], rtol=1e-6)


@pytest.mark.parametrize("fusion", ["A", "B", "C"])
@pytest.mark.parametrize("levels", [1, 2, 3])
def test_every_fusion_keeps_outside_pixels_and_stays_in_unit_range(fusion, levels):
    rng = np.random.default_rng(levels)
    clip = rng.uniform(0, 1, size=(30, 40)).astype(np.float32)
    masks = np.zeros((4, 3, 30, 40), bool)
    for j in range(4):
        for level in range(3):
            y, x = rng.integers(0, 20, size=2)
            masks[j, level, y : y + 8, x : x + 12] = True
    scores = np.sort(rng.normal(0.5, 1.0, size=(4, 3)).astype(np.float32), axis=1)[:, ::-1]
    out = fuse(clip, masks, scores, cfg(fusion=fusion, mask_levels=levels))
    outside = ~masks[:, :levels].any(axis=(0, 1))
    assert outside.any() and (~outside).any()
    np.testing.assert_array_equal(out[outside], clip[outside])
    assert out.min() >= 0.0 and out.max() <= 1.0 and out.dtype == np.float32


def test_fusion_without_masks_is_the_clip_map():
    out = fuse(CLIP, np.zeros((0, 3, 1, 5), bool), np.zeros((0, 3)), cfg())
    np.testing.assert_array_equal(out, CLIP)


def test_unknown_switches_are_rejected():
    with pytest.raises(ValueError, match="fusion"):
        fuse(CLIP, MASKS, SCORES, cfg(fusion="D"))
    with pytest.raises(ValueError, match="prompt_mode"):
        extract_prompts(CLIP, cfg(prompt_mode="scribble"))
    with pytest.raises(ValueError, match="mask_levels"):
        fuse(CLIP, MASKS, SCORES, cfg(mask_levels=4))


def test_prompts_dataclass_is_empty_safe():
    empty = Prompts(np.zeros((0, 2)), np.zeros((0, 4)), np.zeros(0, np.int64))
    assert len(empty) == 0 and empty.labels.shape == (0,)
