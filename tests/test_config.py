"""Profiles as data: loading, overrides, hashing, clear errors."""

import json

import pytest

from clipsam_lib.config import (
    ConfigError,
    ProfileConfig,
    available_profiles,
    hashed_fields,
    load_profile,
)


def test_shipped_profiles_load():
    assert {"smoke", "paper", "cpu_subset"} <= set(available_profiles())
    for name in available_profiles():
        profile = load_profile(name)
        assert profile.name == name
        assert profile.directions, "every profile needs at least one zero-shot direction"
        for direction in profile.directions:
            profile.dataset(direction.train)
            for test in direction.test:
                profile.dataset(test)


def test_paper_profile_matches_method_spec():
    paper = load_profile("paper")
    assert paper.clip.model_name == "ViT-L-14-336" and paper.clip.pretrained == "openai"
    assert paper.clip.image_size == 518 and paper.clip.stages == (6, 12, 18, 24)
    assert paper.sam.model_type == "vit_h" and paper.sam.checkpoint == "sam_vit_h_4b8939.pth"
    assert paper.train.epochs == {"visa": 15, "mvtec": 3}
    assert paper.train.lr == 1e-3 and paper.train.betas == (0.5, 0.999)
    assert paper.train.batch_size == 8 and paper.train.seed == 111
    assert paper.umci.kernels == (2, 4) and paper.umci.hidden_dim == 768
    assert paper.mmr.threshold == 0.5 and paper.mmr.prompt_mode == "point+box"
    assert paper.train.focal_smooth == 1e-5  # APRIL-GAN's focal loss


def test_smoke_profile_uses_the_mini_backbones_and_no_region_caps():
    smoke = load_profile("smoke")
    assert smoke.clip.pretrained == "clipsam-mini-clip.safetensors"
    assert smoke.sam.model_type == "mini" and smoke.sam.checkpoint == "clipsam-mini-sam.safetensors"
    # theta relative to each map's maximum (measured: the mini UMCI's maps stay below 0.3)
    assert smoke.mmr.threshold_mode == "relative" and smoke.mmr.threshold == 0.5
    assert smoke.mmr.min_area == 0 and smoke.mmr.max_regions == 64  # the defaults


def test_dotted_overrides_change_only_that_field_and_the_hash():
    base = load_profile("smoke")
    changed = base.replace(**{"umci.hidden_dim": 256, "mmr.fusion": "B"})
    assert changed.umci.hidden_dim == 256 and changed.mmr.fusion == "B"
    assert base.umci.hidden_dim == 768
    assert changed.hash() != base.hash()
    assert base.replace().hash() == base.hash()
    assert isinstance(changed.umci.kernels, tuple)


def test_a_later_field_at_its_earlier_behaviour_leaves_the_hashes_as_they_were():
    """``train.focal_smooth`` 0 computes what the loss did before the field existed: the
    smoke profile (which sets it) keeps the hash its committed results name, and so do
    its UMCI runs; any other value changes both."""
    smoke = load_profile("smoke")
    assert smoke.train.focal_smooth == 0.0
    assert smoke.hash() == "d6b96bf54d6b"  # results/smoke's config_hash (2026-12-04)
    assert smoke.replace(**{"train.focal_smooth": 1e-5}).hash() != smoke.hash()
    assert smoke.replace(**{"train.focal_smooth": 0.0}).hash() == smoke.hash()


def test_a_umci_run_key_leaves_out_a_later_field_at_its_earlier_behaviour(tmp_path):
    from synthetic_defects import tiny_profile

    from clipsam_lib.train import run_key

    exact = tiny_profile(tmp_path, **{"train.focal_smooth": 0.0})
    keys = {smooth: run_key(exact.replace(**{"train.focal_smooth": smooth}), "src")
            for smooth in (0.0, 1e-5, 1e-3)}
    assert len(set(keys.values())) == 3
    assert "focal_smooth" not in json.dumps(hashed_fields("train", exact.to_dict()["train"]))


def test_unknown_override_and_profile_raise_clear_errors():
    with pytest.raises(ConfigError, match="umci.hiden_dim"):
        load_profile("smoke", **{"umci.hiden_dim": 3})
    with pytest.raises(FileNotFoundError, match="available profiles"):
        load_profile("no-such-profile")


def test_round_trip_through_dict():
    profile = load_profile("paper")
    from clipsam_lib.config import from_dict

    assert from_dict(profile.to_dict()) == profile
    assert isinstance(ProfileConfig().clip.stages, tuple)


@pytest.mark.parametrize("key, value, says", [
    ("mmr.threshold", 1.5, "mmr.threshold = 1.5 must be in [0, 1)"),
    ("mmr.threshold", -0.2, "mmr.threshold = -0.2 must be in [0, 1)"),
    ("umci.hidden_dim", 0, "umci.hidden_dim = 0 must be >= 1"),
    ("umci.hidden_dim", -1, "umci.hidden_dim = -1 must be >= 1"),
    ("umci.hidden_dim", 100, "not divisible by umci.heads = 8"),
    ("umci.enabled", "no", "umci.enabled = 'no' must be true or false"),
    ("mmr.fusion", "D", "mmr.fusion = 'D' must be one of 'A', 'B', 'C'"),
    ("train.lr", "1e-3", ("train.lr = '1e-3' must be a number (YAML reads 1e-3 as text; "
                          "write 1.0e-3)")),
    ("train.lr", "fast", "train.lr = 'fast' must be a number."),
    ("train.batch_size", 2.5, "train.batch_size = 2.5 must be an integer"),
    ("eval.protocol", "loco", "eval.protocol = 'loco' must be one of 'peer', 'mvtec'"),
    ("clip.activation", "swish", "clip.activation = 'swish' must be one of"),
    ("mmr.mask_levels", 4, "mmr.mask_levels = 4 must be one of 1, 2, 3"),
    ("train.epochs", {"visa": 0, "mvtec": 3}, "train.epochs['visa'] = 0"),
    ("cache_dtype", "fp8", "cache_dtype = 'fp8' must be one of"),
])
def test_every_bad_value_is_one_line_naming_the_key_and_what_is_allowed(key, value, says):
    with pytest.raises(ConfigError) as err:
        load_profile("smoke", **{key: value})
    message = str(err.value)
    assert says in message and "\n" not in message


def test_a_profile_file_with_bad_values_lists_each_problem_with_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("mmr:\n  fusion: D\n  threshold: 2\numci:\n  enabled: 'no'\n")
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and all(line.startswith(str(path)) for line in lines)
    assert any("mmr.fusion" in line for line in lines)


def test_yaml_syntax_and_structure_errors_name_the_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("umci:\n  hidden_dim: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken.yaml is not valid YAML at line \d+"):
        load_profile(broken)
    listy = tmp_path / "listy.yaml"
    listy.write_text("- umci\n- mmr\n")
    with pytest.raises(ConfigError, match="listy.yaml holds a list, not a mapping"):
        load_profile(listy)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("umci: 5\n")
    with pytest.raises(ConfigError, match="wrong.yaml: the UMCIConfig entry 5 is not a mapping"):
        load_profile(wrong)
    unknown_set = tmp_path / "unknown.yaml"
    unknown_set.write_text("directions:\n  - {train: nowhere, test: [synth_mvtec]}\n"
                           "datasets:\n  - {name: synth_mvtec, layout: mvtec, root: x}\n")
    with pytest.raises(ConfigError, match="directions\\[0\\].train names dataset 'nowhere'"):
        load_profile(unknown_set)


def test_a_yaml_exponent_without_a_dot_is_text_and_the_error_says_how_to_write_it(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  focal_smooth: 1e-5\n")  # YAML 1.1: a string
    with pytest.raises(ConfigError, match=r"write 1\.0e-5"):
        load_profile(path)
    path.write_text("train:\n  focal_smooth: 1.0e-5\n")
    assert load_profile(path).train.focal_smooth == 1e-5
