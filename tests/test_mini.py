"""The mini backbones: corpus honesty, the recipes' loops, the committed weights."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from clipsam_lib.mini import FILES, RECIPES, WEIGHTS_FOLDER, corpus, recipe_hash
from clipsam_lib.mini.loop import cosine_lr, run_steps
from clipsam_lib.weights import mini_recipe_hash


# -- corpus --------------------------------------------------------------------------------
def test_corpus_shares_no_picture_or_name_with_the_benchmark():
    corpus.check_disjoint()


def test_the_disjointness_check_can_fail(monkeypatch):
    monkeypatch.setitem(corpus.PICTURES, "brick", ("brick", "texture"))
    with pytest.raises(AssertionError, match="brick"):
        corpus.check_disjoint()


def test_corpus_items_are_a_pure_function_of_their_arguments():
    a = corpus.make_item(3, "sam", 17, shapes=True, defect_rate=1.0)
    b = corpus.make_item(3, "sam", 17, shapes=True, defect_rate=1.0)
    c = corpus.make_item(3, "sam", 18, shapes=True, defect_rate=1.0)
    assert np.array_equal(a.image, b.image) and a.name == b.name
    assert all(np.array_equal(x, y) for x, y in zip(a.regions, b.regions))
    assert not np.array_equal(a.image, c.image) or a.name != c.name


def test_each_region_is_named_by_what_drew_it(monkeypatch):
    """A region named by a defect type lies inside a mask that type's procedure returned;
    a "shape" region touches none of them (the procedures recorded as they run)."""
    from clipsam_lib.data import synthetic

    drawn: list[tuple[str, np.ndarray]] = []

    def recording(defect, procedure):
        def draw(picture, kind, rng):
            picture, mask = procedure(picture, kind, rng)
            drawn.append((defect, mask))
            return picture, mask
        return draw

    for defect, procedure in list(synthetic.DEFECTS.items()):
        monkeypatch.setitem(synthetic.DEFECTS, defect, recording(defect, procedure))
    seen = set()
    for index in range(40):
        drawn.clear()
        item = corpus.make_item(0, "sam", index, shapes=True, defect_rate=0.7)
        assert len(item.region_kinds) == len(item.regions)
        for region, kind in zip(item.regions, item.region_kinds):
            inside = [d for d, mask in drawn if (region & ~mask).sum() == 0]
            if kind == "shape":
                assert not any((region & mask).any() for _, mask in drawn)
            else:
                assert kind in inside
            seen.add(kind)
    assert seen == {"shape", *corpus.DEFECT_TYPES}


def test_ordered_map_keeps_the_order_and_stops_early_without_running_on():
    made = []

    def make(index):
        made.append(index)
        return index * index

    assert list(corpus.ordered_map(make, range(100), workers=3)) == [i * i for i in range(100)]
    assert list(corpus.ordered_map(make, range(7), workers=1)) == [i * i for i in range(7)]
    made.clear()
    entries = corpus.ordered_map(make, itertools.count(), workers=2)
    assert [next(entries) for _ in range(5)] == [0, 1, 4, 9, 16]
    entries.close()  # as the SAM corpus does once it has enough pictures
    # An endless index stream: only the chunks handed out ahead were made.
    assert len(made) <= (2 * 2 + 1) * corpus.CHUNK


@pytest.mark.parametrize("which", ["clip", "sam"])
def test_a_corpus_made_on_several_threads_equals_one_made_on_one(which, monkeypatch):
    from clipsam_lib.mini.clip_pretrain import build_corpus
    from clipsam_lib.mini.sam_pretrain import SamCorpus

    recipe = dataclasses.replace(RECIPES[which], corpus_size=2 * corpus.CHUNK + 5)

    def make(workers):
        monkeypatch.setattr(corpus, "worker_count", lambda: workers)
        if which == "clip":
            pixels, patches, labels = build_corpus(recipe, progress=False)
            return [pixels.numpy(), patches.numpy()], labels
        data = SamCorpus(recipe, 384, progress=False)
        return data.images + [m for masks in data.regions for m in masks], len(data)

    (arrays_one, extra_one), (arrays_two, extra_two) = make(1), make(2)
    assert extra_one == extra_two and len(arrays_one) == len(arrays_two)
    assert all(np.array_equal(a, b) for a, b in zip(arrays_one, arrays_two))


def test_an_empty_sam_corpus_ends():
    from clipsam_lib.mini.sam_pretrain import SamCorpus

    recipe = dataclasses.replace(RECIPES["sam"], corpus_size=0)
    assert len(SamCorpus(recipe, 384, progress=False)) == 0  # its index stream is endless


def test_defective_items_have_regions_inside_the_picture_and_normal_ones_none():
    items = [corpus.make_item(0, "clip", i, defect_rate=0.5) for i in range(30)]
    assert {it.anomalous for it in items} == {True, False}
    for item in items:
        assert item.image.dtype == np.uint8 and item.image.shape[2] == 3
        assert item.anomalous or not item.regions  # no shapes asked for: regions are defects
        assert all(r.shape == item.image.shape[:2] and r.any() for r in item.regions)


def test_captions_use_the_projects_states():
    rng = np.random.default_rng(0)
    from clipsam_lib.modeling import text_prompts

    anomalous = {corpus.caption("clock", True, rng) for _ in range(50)}
    normal = {corpus.caption("clock", False, rng) for _ in range(50)}
    allowed_a = set(text_prompts.state_sentences("clock")[1])
    allowed_n = set(text_prompts.state_sentences("clock")[0])
    assert anomalous <= allowed_a and normal <= allowed_n


# -- the loop ------------------------------------------------------------------------------
def test_cosine_schedule_by_hand():
    assert cosine_lr(0, 10, 2, 1.0) == pytest.approx(0.5)
    assert cosine_lr(1, 10, 2, 1.0) == pytest.approx(1.0)
    assert cosine_lr(6, 10, 2, 1.0) == pytest.approx(0.5)  # half way through the decay
    assert cosine_lr(10, 10, 2, 1.0) == pytest.approx(0.0)


@dataclasses.dataclass(frozen=True)
class _Recipe:
    lr: float = 0.1
    warmup_steps: int = 1
    checkpoint_every: int = 2


def _linear_run(work: Path, steps: int, stop_at: int | None = None):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step_fn(step: int):
        if step == stop_at:
            raise KeyboardInterrupt
        x = torch.from_numpy(np.random.default_rng(step).normal(size=(8, 3))).float()
        loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return {"loss": loss.item()}

    log = run_steps(model, optimizer, step_fn, recipe=_Recipe(), work_folder=work,
                    steps=steps, resume=True, progress=False, desc="linear")
    return model, log


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from clipsam_lib.mini import loop

    monkeypatch.setattr(loop, "recipe_hash", lambda recipe: "test")
    straight, log = _linear_run(tmp_path / "a", 6)
    with pytest.raises(KeyboardInterrupt):
        _linear_run(tmp_path / "b", 6, stop_at=5)  # state saved after steps 2 and 4
    resumed, resumed_log = _linear_run(tmp_path / "b", 6)
    assert torch.equal(straight.weight, resumed.weight)
    assert [e["loss"] for e in log] == [e["loss"] for e in resumed_log]


@pytest.mark.slow
def test_a_few_steps_of_each_recipe_lower_the_loss_and_repeat_exactly(tmp_path):
    from clipsam_lib.mini.clip_pretrain import pretrain_clip
    from clipsam_lib.mini.sam_pretrain import pretrain_sam

    clip_recipe = dataclasses.replace(RECIPES["clip"], corpus_size=48, batch_size=16)
    sam_recipe = dataclasses.replace(RECIPES["sam"], corpus_size=12, images_per_step=2)
    for train, recipe, steps in ((pretrain_clip, clip_recipe, 8), (pretrain_sam, sam_recipe, 8)):
        first = train(recipe, tmp_path / "w.safetensors", tmp_path / "a", steps=steps,
                      progress=False)
        again = train(recipe, None, tmp_path / "b", steps=steps, progress=False)
        losses = [e["loss"] for e in first]
        assert np.isfinite(losses).all()
        assert np.mean(losses[-3:]) < np.mean(losses[:3])
        assert losses == [e["loss"] for e in again]  # seeded, same thread count: same bits
        assert mini_recipe_hash(tmp_path / "w.safetensors") == recipe_hash(recipe)


# -- the committed weights -----------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FILES))
def test_committed_weights_name_the_current_recipe(name):
    path = WEIGHTS_FOLDER / FILES[name]
    assert path.is_file(), f"{path} is missing: run `clipsam pretrain-mini`"
    assert mini_recipe_hash(path) == recipe_hash(RECIPES[name]), (
        f"{path.name} was trained with another recipe: run `clipsam pretrain-mini --only "
        f"{name}` and commit the file"
    )


def test_committed_weights_fit_in_20_mb():
    total = sum((WEIGHTS_FOLDER / f).stat().st_size for f in FILES.values())
    assert total <= 20 * 1024 * 1024


def test_mini_weights_load_into_the_real_builders():
    from clipsam_lib.config import ClipConfig, SamConfig, load_profile
    from clipsam_lib.modeling.clip_backbone import ClipBackbone
    from clipsam_lib.modeling.sam_backbone import build_sam
    from clipsam_lib.provenance import weights_identity, weights_kind

    clip = ClipBackbone(ClipConfig(model_name="clipsam-mini-vit", image_size=224,
                                   pretrained=FILES["clip"], stages=(2, 3, 5, 6)))
    from safetensors.torch import load_file

    stored = load_file(str(WEIGHTS_FOLDER / FILES["clip"]))
    assert torch.equal(clip.model.visual.conv1.weight, stored["visual.conv1.weight"].float())
    sam = build_sam(SamConfig(model_type="mini", checkpoint=FILES["sam"]))
    assert sam.image_encoder.img_size == 384
    profile = load_profile("smoke")
    assert weights_kind(profile) == "mini-pretrained"
    identity = weights_identity(profile)
    assert identity.count("mini-pretrained:") == 2 and "random-init" not in identity


def test_patch_state_loss_is_the_balanced_cross_entropy_by_hand():
    from clipsam_lib.mini.clip_pretrain import patch_state_loss

    # One picture, three patches in 2-D, texts "flawless" = x axis and "damaged" = y axis.
    tokens = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]]])
    states = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    defect = torch.tensor([[False, True, True]])
    scale = torch.tensor(2.0)
    # Patch 0 (clean): logits (2, 0); patch 1 (defect): (0, 2); patch 2 (defect): (1.41, 1.41).
    clean = np.log1p(np.exp(-2.0))
    defects = (np.log1p(np.exp(-2.0)) + np.log(2.0)) / 2
    got = patch_state_loss(tokens, states, defect, scale)
    assert got.item() == pytest.approx((clean + defects) / 2, rel=1e-6)
    # A picture without defect patches: the clean patches alone.
    only_clean = patch_state_loss(tokens[:, :1], states, defect[:, :1], scale)
    assert only_clean.item() == pytest.approx(clean, rel=1e-6)


def test_the_mini_clip_runs_at_another_image_size():
    # Its positional embedding is stored in fp32, so open_clip can resize it (bicubic).
    from safetensors.torch import load_file

    from clipsam_lib.config import ClipConfig
    from clipsam_lib.modeling.clip_backbone import ClipBackbone

    stored = load_file(str(WEIGHTS_FOLDER / FILES["clip"]))
    assert stored["visual.positional_embedding"].dtype == torch.float32
    clip = ClipBackbone(ClipConfig(model_name="clipsam-mini-vit", image_size=336,
                                   pretrained=FILES["clip"], stages=(2, 6)))
    stages = clip.encode_stages(torch.randn(1, 3, 336, 336))
    assert stages[0].shape == (1, 24 * 24, 128)


def test_box_prompts_train_all_three_masks_and_a_lone_point_its_best():
    import dataclasses

    from clipsam_lib.mini.recipes import SamRecipe
    from clipsam_lib.mini.sam_pretrain import trained_mask_loss

    # Two prompts' losses for SAM's three masks, worked out by hand.
    losses = torch.tensor([[0.9, 0.2, 0.4], [0.3, 0.6, 0.9]])
    recipe = SamRecipe()
    assert recipe.box_trains_all_masks
    assert trained_mask_loss(losses, False, recipe).item() == pytest.approx((0.2 + 0.3) / 2)
    assert trained_mask_loss(losses, True, recipe).item() == pytest.approx(3.3 / 6)
    best_only = dataclasses.replace(recipe, box_trains_all_masks=False)
    assert trained_mask_loss(losses, True, best_only).item() == pytest.approx(0.25)


def test_loose_boxes_hold_the_region_stay_in_the_picture_and_cost_nothing_when_off():
    from clipsam_lib.mini.recipes import SamRecipe, recipe_blob
    from clipsam_lib.mini.sam_pretrain import _box, jittered_box, loose_box, mask_box

    mask = np.zeros((60, 80), bool)
    mask[5:15, 60:78] = True  # inclusive box (60, 5, 77, 14), near the right edge
    tight = mask_box(mask)
    assert tight.tolist() == [60, 5, 77, 14]
    rng = np.random.default_rng(0)
    for _ in range(50):
        box = loose_box(mask, 0.75, rng)
        assert (box[:2] <= tight[:2]).all() and (box[2:] >= tight[2:]).all()
        assert box[0] >= 0 and box[1] >= 0 and box[2] <= 79 and box[3] <= 59
        # Pushed out by at most 0.75 x the side (18 x 10 px): never past 60 - 13.5, 5 - 7.5.
        assert box[0] >= 60 - 0.75 * 18 - 1e-4 and box[1] >= 0
    # Off (the committed recipe): the box is the jittered one from the same random stream,
    # and the new fields leave the recipe's hash alone.
    recipe = SamRecipe()
    assert recipe.loose_box_rate == 0.0
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    assert np.array_equal(_box(mask, recipe, a), jittered_box(mask, recipe.box_jitter, b))
    assert "loose_box_rate" not in recipe_blob(recipe)["recipe"]
    assert "loose_box_growth" not in recipe_blob(recipe)["recipe"]
    on = dataclasses.replace(recipe, loose_box_rate=0.5)
    assert {"loose_box_rate", "loose_box_growth"} <= set(recipe_blob(on)["recipe"])


def test_part_boxes_surround_their_point_with_a_fraction_of_the_regions_sides():
    from clipsam_lib.mini.recipes import SamRecipe, recipe_blob
    from clipsam_lib.mini.sam_pretrain import _prompts, part_box

    mask = np.zeros((60, 80), bool)
    mask[10:50, 20:60] = True  # a 40 x 40 region
    rng = np.random.default_rng(0)
    centre = np.array([30.5, 40.5], np.float32)
    for _ in range(50):
        x0, y0, x1, y1 = part_box(mask, centre, (0.1, 0.5), rng)
        assert x0 <= 30.5 <= x1 and y0 <= 40.5 <= y1
        assert 4 - 1e-4 <= x1 - x0 <= 20 + 1e-4 and 4 - 1e-4 <= y1 - y0 <= 20 + 1e-4
    # With every box a part box, a point+box prompt's box goes around its own point.
    recipe = SamRecipe(part_box_rate=1.0)
    coords, boxes = _prompts([mask, mask], "point+box", recipe, np.random.default_rng(1))
    for (x, y), (x0, y0, x1, y1) in zip(coords[:, 0].numpy(), boxes.numpy()):
        assert x0 <= x <= x1 and y0 <= y <= y1 and x1 - x0 <= 20 + 1e-4
    assert "part_box_rate" not in recipe_blob(SamRecipe())["recipe"]
    assert "part_box_scale" not in recipe_blob(SamRecipe())["recipe"]
