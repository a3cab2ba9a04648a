"""``clip.compile`` / ``sam.compile``: the compiled encoders compute the eager ones."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch

from clipsam_lib.config import ClipConfig, SamConfig
from clipsam_lib.modeling import compiled
from clipsam_lib.modeling.clip_backbone import ClipBackbone, clip_identity
from clipsam_lib.modeling.sam_backbone import SamBackbone, build_sam, sam_identity

needs_compiler = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("c++", "g++", "clang++")),
    reason="torch.compile needs a C++ compiler on the CPU")

TINY_CLIP = {"model_name": "clipsam-tiny-vit", "pretrained": None, "image_size": 224,
             "stages": (1, 2)}


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(autouse=True)
def _inductor_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(compiled.CACHE_ENV, str(tmp_path / "inductor"))
    yield
    torch._dynamo.reset()


def _clip(compile_: bool, dtype: str = "fp32") -> ClipBackbone:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ClipBackbone(ClipConfig(**TINY_CLIP, dtype=dtype, compile=compile_))


@needs_compiler
def test_compiled_clip_equals_eager_in_fp32_and_within_bf16_rounding(tmp_path):
    pixels = torch.randn(2, 3, 224, 224)
    eager_stages, eager_global = _clip(False).encode_images(pixels)
    stages, global_ = _clip(True).encode_images(pixels)
    for got, want in zip(stages + [global_], eager_stages + [eager_global]):
        assert _relative_error(got, want) <= 1e-5
    bf16_stages, _ = _clip(True, "bf16").encode_images(pixels)
    assert _relative_error(bf16_stages[-1], eager_stages[-1]) <= 2e-2
    # TorchInductor wrote its kernels where it was told to.
    assert any((tmp_path / "inductor").rglob("*"))


@needs_compiler
def test_compiled_sam_embedding_equals_eager_and_keeps_the_library_keys():
    cfg = SamConfig(model_type="tiny", checkpoint=None)
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    eager = SamBackbone(cfg).embed(image).embedding
    fast = SamBackbone(SamConfig(model_type="tiny", checkpoint=None, compile=True))
    assert set(fast.model.state_dict()) == set(build_sam(cfg).state_dict())  # no _orig_mod
    assert _relative_error(fast.embed(image).embedding, eager) <= 1e-5


def test_the_cache_folder_replaces_torchs_default_but_not_a_users_choice(tmp_path,
                                                                         monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv(compiled.CACHE_ENV, default_cache_dir())  # what importing torch sets
    assert compiled.use_cache_folder(tmp_path / "ours") == tmp_path / "ours"
    monkeypatch.setenv(compiled.CACHE_ENV, str(tmp_path / "theirs"))
    assert compiled.use_cache_folder(tmp_path / "ours") == tmp_path / "theirs"


def test_identities_name_compile_only_when_it_is_on():
    eager, fast = ClipConfig(**TINY_CLIP), ClipConfig(**TINY_CLIP, compile=True)
    assert "compiled" not in clip_identity(eager)
    assert clip_identity(fast)["compiled"] is True
    sam = SamConfig(model_type="tiny", checkpoint=None)
    assert "compiled" not in sam_identity(sam)
    assert sam_identity(SamConfig(model_type="tiny", checkpoint=None, compile=True))["compiled"]


def test_compile_without_a_cpp_compiler_fails_before_any_work(monkeypatch):
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
    with pytest.raises(compiled.CompileUnavailable, match="clip.compile.*C\\+\\+ compiler"):
        _clip(True)
    with pytest.raises(compiled.CompileUnavailable, match="sam.compile"):
        SamBackbone(SamConfig(model_type="tiny", checkpoint=None, compile=True))
    # ... and the preflight lists it before a run starts.
    from clipsam_lib.config import load_profile
    from clipsam_lib.preflight import preflight

    report = preflight(load_profile("smoke", **{"sam.compile": True}))
    assert any("sam.compile" in problem for problem in report.problems)
