"""Folders that the latest complete run did not use: listed, and removed on request
(``clipsam clean``).

Feature caches, UMCI runs and map folders are keyed by what determines them, so a
changed setting (other weights, another resolution, a new UMCI variant) writes a new
folder and leaves the old one where it was. At the paper's sizes a CLIP cache holds
about 11 MB an image (~94 GB for the paper profile's test images, README), and nothing
else ever removes an outdated one.

How a folder is known to be outdated, without re-deriving every key the notebooks use:
each stage stamps the keyed folder it opens (``mark_used``), and ``clipsam run``, when it
executed every numbered notebook, records when it started (``record_complete_run``). A
folder not stamped since the start of the latest complete run of every results folder
that shares its root was used by none of them (``stale_folders``). The cleaner lists by
default and removes only when asked, and never a folder of a root no complete run has
been recorded for.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from clipsam_lib import paths
from clipsam_lib.config import ProfileConfig
from clipsam_lib.errors import UserError
from clipsam_lib.io_utils import folder_bytes, write_json_atomic

STAMP = ".last_used"
# In each root: results folder -> the latest complete run that wrote there. A cache is
# shared by every run of the same backbones, whatever its results folder (the tests' runs
# write theirs to a temporary one): each keeps its own record.
RUNS_FILE = "complete_runs.json"

# The keyed folders under each root (glob, name pattern): a cache's model key, a UMCI
# run ("<train dataset>-<run key>"), a map folder ("<dataset>/<map key>").
KEYED = {
    "cache": [("clip/*", r"[0-9a-f]{16}"), ("sam/*", r"[0-9a-f]{16}")],
    "results": [("checkpoints/*", r".+-[0-9a-f]{12}"), ("maps/*/*", r"[0-9a-f]{16}")],
}


@dataclass
class StaleFolder:
    path: Path
    last_used: float | None  # the stamp's time; None: never stamped
    size_bytes: int

    def line(self) -> str:
        when = ("never stamped" if self.last_used is None else
                "last used " + time.strftime("%Y-%m-%d %H:%M", time.localtime(self.last_used)))
        return f"{self.path} ({self.size_bytes / 2**30:.2f} GiB, {when})"


def mark_used(folder: Path) -> None:
    """Stamp ``folder`` as used now. Best effort: a read-only cache still serves."""
    try:
        (Path(folder) / STAMP).write_text(f"{time.time():.3f}\n")
    except OSError:
        pass


def last_used(folder: Path) -> float | None:
    try:
        return float((folder / STAMP).read_text())
    except (OSError, ValueError):
        return None


def roots(profile: ProfileConfig) -> dict[str, Path]:
    return {"cache": paths.cache_dir(profile), "results": paths.results_dir(profile)}


def record_complete_run(profile: ProfileConfig, started: float) -> None:
    """Note in each root that every notebook of ``profile`` ran, from ``started`` on."""
    results = str(paths.results_dir(profile))
    for root in roots(profile).values():
        runs = _complete_runs(root)
        runs[results] = {"profile": profile.name, "config_hash": profile.hash(),
                         "started": started,
                         "date": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))}
        write_json_atomic(root / RUNS_FILE, runs)


def _complete_runs(root: Path) -> dict:
    """The recorded runs whose results folder is still there: one that is gone (a test's
    temporary folder) needs nothing any more."""
    file = root / RUNS_FILE
    if not file.is_file():
        return {}
    try:
        runs = json.loads(file.read_text())
        return {results: {**run, "started": float(run["started"])}
                for results, run in runs.items() if Path(results).is_dir()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{file} is damaged; delete it and run `clipsam run` for each profile "
                        "that uses this folder, which records it again.") from None


def keyed_folders(kind: str, root: Path) -> list[Path]:
    return sorted(folder for pattern, name in KEYED[kind] for folder in root.glob(pattern)
                  if folder.is_dir() and re.fullmatch(name, folder.name))


def stale_folders(profile: ProfileConfig) -> tuple[list[StaleFolder], list[str]]:
    """(stale folders, notes): the keyed folders of the profile's roots that no recorded
    complete run used; a note for each root without a recorded complete run."""
    stale, notes = [], []
    for kind, root in roots(profile).items():
        runs = _complete_runs(root)
        if not runs:
            notes.append(f"{root}: no complete run recorded here, so nothing in it is listed "
                         f"(`clipsam run --profile {profile.name}` records one).")
            continue
        # Shared by several runs' results: used by none of their latest complete runs.
        since = min(run["started"] for run in runs.values())
        for folder in keyed_folders(kind, root):
            used = last_used(folder)
            if used is None or used < since:
                stale.append(StaleFolder(folder, used, folder_bytes(folder)))
    return stale, notes


def compile_cache(profile: ProfileConfig) -> StaleFolder | None:
    """TorchInductor's compiled kernels (``paths.compile_cache_dir``), if any.

    Not keyed by anything the project decides (torch names its own entries), so no stamp
    can say which a run used; but it is only a cache: a compiled backbone writes what it
    needs again on its next first call (about a minute). Removed only when asked by name
    (``clipsam clean --delete --compiled``), which is for a time when no run is compiling.
    """
    folder = paths.compile_cache_dir(profile)
    if not folder.is_dir():
        return None
    return StaleFolder(folder, None, folder_bytes(folder))  # never stamped (above)


def remove(folders: list[StaleFolder]) -> int:
    """Delete the folders; return the bytes freed."""
    for folder in folders:
        try:
            shutil.rmtree(folder.path)
        except OSError as err:
            raise UserError(f"Cannot remove {folder.path} ({err.strerror}); fix its "
                            "permissions or remove it by hand (the folders listed before it "
                            "are removed).") from None
    return sum(folder.size_bytes for folder in folders)

