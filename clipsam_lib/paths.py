"""Where things live on disk: one place, so notebooks and the CLI agree."""

from __future__ import annotations

import os
from pathlib import Path

from clipsam_lib.config import ProfileConfig


def project_root() -> Path:
    """The checkout (the folder with this project's pyproject.toml), else the cwd.

    ``CLIPSAM_ROOT`` overrides it, e.g. for an installed package used outside the repo.
    """
    env = os.environ.get("CLIPSAM_ROOT")
    if env:
        return Path(env).resolve()
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for folder in (start, *start.parents):
            pyproject = folder / "pyproject.toml"
            if pyproject.is_file() and 'name = "clipsam-lib"' in pyproject.read_text():
                return folder
    return Path.cwd().resolve()


def _under_root(path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p


def data_dir(profile: ProfileConfig) -> Path:
    """Datasets of this profile: ``<data_dir>/<dataset root>``."""
    return _under_root(profile.data_dir)


def dataset_root(profile: ProfileConfig, name: str) -> Path:
    root = Path(profile.dataset(name).root).expanduser()
    return root if root.is_absolute() else data_dir(profile) / root


def cache_dir(profile: ProfileConfig) -> Path:
    """Feature caches (backbone outputs), shared by every run of the profile."""
    return _under_root(profile.cache_dir)


def compile_cache_dir(profile: ProfileConfig) -> Path:
    """TorchInductor's compiled kernels (``clip.compile`` / ``sam.compile``)."""
    return cache_dir(profile) / "inductor"


def index_fallback_dir(profile: ProfileConfig) -> Path:
    """Where the index (meta.json) of a dataset on read-only storage is kept."""
    return cache_dir(profile) / "indexes"


def results_dir(profile: ProfileConfig) -> Path:
    """``results/<profile>/``: tables, figures, executed notebooks, checkpoints.

    ``CLIPSAM_RESULTS_DIR`` replaces ``results/`` (the test suite executes the notebooks
    into a temporary folder this way, leaving the committed results untouched).
    """
    base = os.environ.get("CLIPSAM_RESULTS_DIR") or profile.results_dir
    return _under_root(base) / profile.name


def results_subdir(profile: ProfileConfig, kind: str) -> Path:
    """``results/<profile>/<kind>/`` (created): kind is tables, figures, checkpoints, maps..."""
    path = results_dir(profile) / kind
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        from clipsam_lib.io_utils import disk_error

        raise (disk_error(path, err) or err) from None
    return path
