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
