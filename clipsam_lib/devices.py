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


# A CPU forward pass is kept to what its MLP activations fit in (about one ViT-L image at
# 518 px: 1,370 tokens x 4,096 x 4 bytes = 22 MB). Measured with bench/backbones.py on 2
# cores, both sizes timed in turn: one bf16 pass of 8 ViT-L images (180 MB) took 1.12x
# the per-image time of batch 1 head by head, 1.03x with open_clip's attention; a small
# model's pass of 8 fits (the mini CLIP: 4 MB), so it keeps the batch.
CPU_BATCH_BYTES = 32 * 2**20


def clip_extraction_batch(device: str | torch.device = "auto", tokens: int = 1370,
                          width: int = 1024) -> int:
    """Images per CLIP forward when the feature cache is filled: 8 on a GPU, which a batch
    fills; on the CPU as many (1 to 8) as keep ``tokens x 4 width`` fp32 activations per
    image within ``CPU_BATCH_BYTES``."""
    if resolve_device(device).type != "cpu":
        return 8
    per_image = tokens * 4 * width * 4
    return max(1, min(8, CPU_BATCH_BYTES // per_image))


# -- bf16: where it pays ----------------------------------------------------------------------

_BF16_FASTER: dict[str, bool] = {}


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _timed_matmul(dtype: torch.dtype, size: int = 512, repeats: int = 3) -> float:
    import time

    a = torch.randn(size // 4, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    torch.matmul(a, b)  # warm-up: kernel selection, first-touch allocation
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return best


def bf16_pays(device: str | torch.device = "auto") -> bool:
    """Whether the device has a bf16 matrix unit that beats fp32: detected, not assumed.

    CUDA: bf16 support with tensor cores (compute capability 8.0 or later). CPU: the
    flags alone do not decide it (a CPU can list ``avx512_bf16`` and still run a bf16
    matmul ~200x slower than fp32, as the machine this project is built on does): a
    64 x 512 x 512 matmul is timed in both dtypes once per process, and bf16 must be at
    least 1.5x faster. MPS: fp32 (not measured).
    """
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        major, _ = torch.cuda.get_device_capability(resolved)
        return bool(torch.cuda.is_bf16_supported() and major >= 8)
    if resolved.type != "cpu":
        return False
    if "cpu" not in _BF16_FASTER:
        flags = _cpu_flags()
        has_unit = bool(flags & {"amx_bf16", "avx512_bf16"}) or not flags  # unknown: measure
        _BF16_FASTER["cpu"] = has_unit and (
            _timed_matmul(torch.bfloat16) * 1.5 < _timed_matmul(torch.float32))
    return _BF16_FASTER["cpu"]


def resolve_dtype(dtype: str, device: str | torch.device = "auto") -> str:
    """``auto`` -> ``bf16`` where ``bf16_pays(device)``, else ``fp32``; others unchanged."""
    if dtype != "auto":
        return dtype
    return "bf16" if bf16_pays(device) else "fp32"
