"""Which torch device a profile's ``device`` field names.

``auto`` picks CUDA, then Apple's MPS, then the CPU. On MPS, operations PyTorch has not
implemented there run on the CPU instead (``PYTORCH_ENABLE_MPS_FALLBACK=1``, set before
the first use), with one warning saying so: results are the same, slower.
"""

from __future__ import annotations

import os
import warnings

import torch

DEVICES = ("auto", "cpu", "cuda", "mps")


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA, else MPS, else CPU; any other name as torch spells it."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        device = "mps" if mps_available() else "cpu"
    if device == "mps":
        _enable_mps_fallback()
    return torch.device(device)


_warned = False


def _enable_mps_fallback() -> None:
    global _warned
    if os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK") != "1":
        os.environ["PYTORCH_ENABLE_MPS_FALLBACK"] = "1"
    if not _warned:
        _warned = True
        warnings.warn("Running on Apple MPS: operations MPS lacks fall back to the CPU "
                      "(PYTORCH_ENABLE_MPS_FALLBACK=1); same results, slower.", stacklevel=3)


def device_name(device: str | torch.device = "auto") -> str:
    """What results rows say: ``cuda:<GPU name>``, ``mps`` or ``cpu``."""
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(resolved)}"
    return resolved.type
