"""device: auto picks CUDA, then MPS, then the CPU; MPS falls back with one warning."""

from __future__ import annotations

import warnings

import pytest
import torch

from clipsam_lib import devices
from clipsam_lib.config import ConfigError, load_profile
from clipsam_lib.provenance import provenance_columns


@pytest.fixture
def fake(monkeypatch):
    def set_present(cuda: bool, mps: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(devices, "mps_available", lambda: mps)
        monkeypatch.setattr(devices, "_warned", False)
        monkeypatch.delenv("PYTORCH_ENABLE_MPS_FALLBACK", raising=False)

    return set_present


@pytest.mark.parametrize("cuda, mps, expected", [
    (True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu"),
])
def test_auto_prefers_cuda_then_mps_then_cpu(fake, cuda, mps, expected):
    fake(cuda, mps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert devices.resolve_device("auto").type == expected
    assert devices.resolve_device("cpu").type == "cpu"


def test_mps_enables_the_cpu_fallback_with_one_warning(fake):
    import os

    fake(False, True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        devices.resolve_device("auto")
        devices.resolve_device("mps")  # the second MPS use does not warn again
    assert len(caught) == 1 and "fall back to the CPU" in str(caught[0].message)
    assert os.environ["PYTORCH_ENABLE_MPS_FALLBACK"] == "1"


def test_results_rows_name_the_device_and_bad_devices_fail_at_load(fake):
    fake(False, False)
    assert provenance_columns(load_profile("smoke"))["device"] == "cpu"
    assert load_profile("smoke", device="cuda:1").device == "cuda:1"
    with pytest.raises(ConfigError, match="device = 'tpu' must be one of"):
        load_profile("smoke", device="tpu")


@pytest.mark.parametrize("bf16_seconds, flags, expected", [
    (0.1, {"avx512_bf16"}, "bf16"),   # a bf16 unit that pays
    (10.0, {"avx512_bf16"}, "fp32"),  # listed, but ~100x slower (the machine this is built on)
    (0.1, {"avx2", "fma"}, "fp32"),   # no bf16 unit: not even measured
])
def test_auto_dtype_is_measured_not_assumed(monkeypatch, bf16_seconds, flags, expected):
    import torch

    from clipsam_lib import devices

    monkeypatch.setattr(devices, "_BF16_FASTER", {})
    monkeypatch.setattr(devices, "_cpu_flags", lambda: flags)
    monkeypatch.setattr(devices, "_timed_matmul",
                        lambda dtype, **_: bf16_seconds if dtype == torch.bfloat16 else 1.0)
    assert devices.resolve_dtype("auto", "cpu") == expected
    assert devices.resolve_dtype("fp32", "cpu") == "fp32"


def test_a_profile_names_the_dtype_auto_resolved_to(monkeypatch):
    from clipsam_lib import devices
    from clipsam_lib.config import load_profile
    from clipsam_lib.provenance import provenance_columns

    monkeypatch.setattr(devices, "_BF16_FASTER", {"cpu": False})
    profile = load_profile("smoke", **{"clip.dtype": "auto", "sam.dtype": "auto"})
    assert profile.clip.dtype == "fp32" and profile.sam.dtype == "fp32"
    assert profile.hash() == load_profile("smoke").hash()  # same as asking for fp32
    assert provenance_columns(profile)["dtype"] == "clip=fp32;sam=fp32"


def test_cpu_extraction_batches_only_what_fits_and_gpus_take_eight():
    from clipsam_lib.devices import CPU_BATCH_BYTES, clip_extraction_batch

    assert clip_extraction_batch("cpu", 1370, 1024) == 1  # ViT-L @518: 22 MB per image
    assert clip_extraction_batch("cpu", 257, 128) == 8  # the mini CLIP: capped at 8
    per_image = 577 * 4 * 1024 * 4  # ViT-L @336: 9.5 MB per image
    assert clip_extraction_batch("cpu", 577, 1024) == CPU_BATCH_BYTES // per_image == 3
    assert clip_extraction_batch("cuda", 1370, 1024) == 8
