"""``torch.compile`` for the frozen encoders, as a config switch (``clip.compile``,
``sam.compile``).

Compiling fuses the element-wise work between the matrix products (layer norms, GELU,
the dtype casts autocast inserts), which is what keeps an encoder below the machine's
matmul peak. It costs a compilation at the first call of each input shape, so whether
it pays depends on the machine and on how many images follow: ``bench/backbones.py``
measures both (the first call and the steady state). TorchInductor keeps its compiled
kernels in an on-disk cache; it is put under the profile's cache folder, so a second
run (or a second process) compiles from the cache instead of from scratch.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from clipsam_lib.errors import UserError

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


class CompileUnavailable(UserError, RuntimeError):
    """``compile: true`` on a machine where TorchInductor cannot build its kernels."""


def check_compiler(device: torch.device, key: str) -> None:
    """TorchInductor builds CPU kernels with a C++ compiler: fail before any work if none."""
    if device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++")
                                     or shutil.which("clang++")):
        raise CompileUnavailable(
            f"{key} is true but this machine has no C++ compiler (c++, g++ or clang++), "
            f"which torch.compile needs on the CPU: install one, or set {key}: false.")


def prepare(device: torch.device, key: str, cache_folder: str | Path | None) -> None:
    """Before building a backbone with ``key`` (``clip.compile``/``sam.compile``) on."""
    check_compiler(device, key)
    if cache_folder is not None:
        use_cache_folder(cache_folder)


def use_cache_folder(folder: str | Path) -> Path:
    """TorchInductor's on-disk cache under ``folder`` unless the user already chose one.

    Importing parts of torch (open_clip does) writes torch's default, a folder under the
    temporary directory, into the variable: that one is not a choice and is replaced.
    """
    current = os.environ.get(CACHE_ENV)
    if current is None or os.path.abspath(current) == _torch_default():
        os.environ[CACHE_ENV] = str(Path(folder).resolve())
    chosen = Path(os.environ[CACHE_ENV])
    chosen.mkdir(parents=True, exist_ok=True)
    return chosen


def _torch_default() -> str | None:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # another torch: only an unset variable counts as no choice
        return None
    return os.path.abspath(default_cache_dir())


def compiled(fn: Callable[..., Any], enabled: bool) -> Callable[..., Any]:
    """``fn`` compiled for fixed shapes (a new batch size compiles once more), or ``fn``."""
    return torch.compile(fn, dynamic=False) if enabled else fn
