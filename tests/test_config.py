"""Profiles as data: loading, overrides, hashing, clear errors."""

import pytest

from clipsam_lib.config import ProfileConfig, available_profiles, load_profile


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


def test_smoke_profile_is_random_init_and_says_so():
    smoke = load_profile("smoke")
    assert smoke.clip.pretrained is None and smoke.sam.checkpoint is None


def test_dotted_overrides_change_only_that_field_and_the_hash():
    base = load_profile("smoke")
    changed = base.replace(**{"umci.hidden_dim": 256, "mmr.fusion": "B"})
    assert changed.umci.hidden_dim == 256 and changed.mmr.fusion == "B"
    assert base.umci.hidden_dim == 768
    assert changed.hash() != base.hash()
    assert base.replace().hash() == base.hash()
    assert isinstance(changed.umci.kernels, tuple)


def test_unknown_override_and_profile_raise_clear_errors():
    with pytest.raises(KeyError, match="umci.hiden_dim"):
        load_profile("smoke", **{"umci.hiden_dim": 3})
    with pytest.raises(FileNotFoundError, match="available profiles"):
        load_profile("no-such-profile")


def test_round_trip_through_dict():
    profile = load_profile("paper")
    from clipsam_lib.config import from_dict

    assert from_dict(profile.to_dict()) == profile
    assert isinstance(ProfileConfig().clip.stages, tuple)
