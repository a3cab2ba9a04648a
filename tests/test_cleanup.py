"""`clipsam clean`: the keyed folders the latest complete run did not use, and only those.

The stages stamp what they open (a real UMCI training, a real map run with MMR, the
feature caches), so the folders of an outdated configuration, planted beside them, are
the only ones listed; a root without a recorded complete run lists nothing.
"""

from __future__ import annotations

import json
import time

import pytest
from synthetic_defects import tiny_profile

from clipsam_lib import cleanup, cli, paths
from clipsam_lib.errors import UserError
from clipsam_lib.pipeline import run_dataset
from clipsam_lib.preflight import Preflight, _check_folders
from clipsam_lib.train import train_umci
from clipsam_lib.workspace import Workspace

OUTDATED = {  # one folder of each kind, as an earlier configuration left them
    "cache": ["clip/00000000000000aa", "sam/00000000000000bb"],
    "results": ["checkpoints/src-0000000000cc", "maps/dst/00000000000000dd"],
}
NOT_KEYED = "maps/mvtec_tiffs_dst"  # the export for the official MVTec script


def _plant(profile) -> set:
    planted = set()
    for kind, root in cleanup.roots(profile).items():
        for rel in OUTDATED[kind]:
            folder = root / rel
            folder.mkdir(parents=True)
            (folder / "entry.pt").write_bytes(b"x" * 2048)
            planted.add(folder)
    (cleanup.roots(profile)["results"] / NOT_KEYED / "bottle").mkdir(parents=True)
    return planted


def _stale(profile) -> set:
    return {folder.path for folder in cleanup.stale_folders(profile)[0]}


@pytest.fixture(scope="module")
def used(tmp_path_factory):
    """A profile whose complete run trained a UMCI and wrote maps with MMR, beside the
    folders of an outdated configuration stamped before that run."""
    tmp = tmp_path_factory.mktemp("cleanup")
    profile = tiny_profile(tmp, **{"mmr.max_regions": 2})
    planted = _plant(profile)
    for folder in planted:
        cleanup.mark_used(folder)
    time.sleep(0.01)
    cleanup.record_complete_run(profile, time.time())
    ws = Workspace(profile)
    result = train_umci(ws, "src", progress=False)
    records = [r for r in ws.dataset("dst").records() if r["anomaly"]][:2]
    maps = run_dataset(ws, result.checkpoint, "dst", records, progress=False)
    return profile, planted, {result.run_dir, maps.dir}


def test_only_the_outdated_folders_are_listed(used):
    profile, planted, written = used
    roots = cleanup.roots(profile)
    kept = {f for kind, root in roots.items() for f in cleanup.keyed_folders(kind, root)} - planted
    # What the run used: its UMCI, its map folder and the CLIP and SAM caches.
    assert written <= kept and len(kept) == 4
    assert all(cleanup.last_used(folder) for folder in kept)
    assert _stale(profile) == planted
    sizes = {f.path: f.size_bytes for f in cleanup.stale_folders(profile)[0]}
    assert all(2048 < size < 2100 for size in sizes.values())  # the entry and the stamp


def test_a_later_partial_run_keeps_what_it_used(used):
    """A folder used after the complete run started (a later `--only 03`) is kept."""
    profile, planted, _ = used
    later = next(iter(sorted(planted)))
    cleanup.mark_used(later)
    try:
        assert _stale(profile) == planted - {later}
    finally:
        (later / cleanup.STAMP).write_text("0\n")


def test_a_shared_cache_keeps_what_any_results_folder_used(used, tmp_path):
    """A second results folder's newer complete run does not outdate what the first
    one's used; once that folder is gone, its record no longer holds anything."""
    profile, planted, _ = used
    cache = cleanup.roots(profile)["cache"]
    first = json.loads((cache / cleanup.RUNS_FILE).read_text())
    other = profile.replace(results_dir=str(tmp_path / "other"))
    paths.results_dir(other).mkdir(parents=True)
    cleanup.record_complete_run(other, time.time() + 60)
    clip = cleanup.keyed_folders("cache", cache)
    try:
        assert not _stale(profile) & set(clip) - planted  # the first run's start still counts
        gone = tmp_path / "gone"
        runs = json.loads((cache / cleanup.RUNS_FILE).read_text())
        oldest = {**next(iter(runs.values())), "started": 0.0}
        (cache / cleanup.RUNS_FILE).write_text(json.dumps({str(gone): oldest, **runs}))
        assert _stale(profile) == planted  # the gone folder's old run is not the oldest
    finally:
        (cache / cleanup.RUNS_FILE).write_text(json.dumps(first))


def test_nothing_is_listed_without_a_recorded_complete_run(tmp_path):
    profile = tiny_profile(tmp_path)
    _plant(profile)
    stale, notes = cleanup.stale_folders(profile)
    assert stale == [] and len(notes) == 2 and "no complete run recorded" in notes[0]


def test_a_damaged_record_names_its_file(tmp_path):
    profile = tiny_profile(tmp_path)
    record = paths.cache_dir(profile) / cleanup.RUNS_FILE
    record.parent.mkdir(parents=True)
    record.write_text("{not json")
    with pytest.raises(UserError, match=f"{record} is damaged; delete it"):
        cleanup.stale_folders(profile)


def test_clean_lists_by_default_and_deletes_when_asked(tmp_path, monkeypatch, capsys):
    profile = tiny_profile(tmp_path)
    planted = _plant(profile)
    cleanup.record_complete_run(profile, time.time())
    monkeypatch.setattr("clipsam_lib.config.load_profile", lambda name: profile)
    assert cli.main(["clean"]) == 0
    out = capsys.readouterr().out
    assert "4 folder(s), 0.00 GiB, unused by the latest complete run: `--delete`" in out
    assert all(folder.is_dir() for folder in planted)
    assert cli.main(["clean", "--delete"]) == 0
    assert "removed 4 folder(s)" in capsys.readouterr().out
    assert not any(folder.exists() for folder in planted)
    assert (paths.results_dir(profile) / NOT_KEYED / "bottle").is_dir()


def test_a_full_disk_points_at_the_outdated_folders(tmp_path, monkeypatch):
    profile = tiny_profile(tmp_path)
    _plant(profile)
    cleanup.record_complete_run(profile, time.time())

    class Usage:
        free = -1  # short of any need, this tiny profile's near-zero one too

    monkeypatch.setattr("clipsam_lib.preflight.shutil.disk_usage", lambda path: Usage)
    report = Preflight(profile.name)
    _check_folders(profile, report, {"src": 10}, {"src": 10 * 100 * 100})
    assert len(report.problems) == 2
    assert all(f"`clipsam clean --profile {profile.name} --delete` frees 0.0 GiB" in p
               for p in report.problems)


def test_a_folder_that_cannot_be_removed_is_named(tmp_path, monkeypatch):
    profile = tiny_profile(tmp_path)
    planted = _plant(profile)
    cleanup.record_complete_run(profile, time.time())
    stale, _ = cleanup.stale_folders(profile)

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("clipsam_lib.cleanup.shutil.rmtree", refuse)
    with pytest.raises(UserError, match=f"Cannot remove {stale[0].path} .Permission denied.; "
                                        "fix its permissions"):
        cleanup.remove(stale)
    assert all(folder.is_dir() for folder in planted)


def test_the_compiled_kernel_cache_is_listed_and_removed_only_when_named(
        tmp_path, monkeypatch, capsys):
    profile = tiny_profile(tmp_path)
    planted = _plant(profile)
    cleanup.record_complete_run(profile, time.time())
    kernels = paths.compile_cache_dir(profile) / "fxgraph" / "ab"
    kernels.mkdir(parents=True)
    (kernels / "entry").write_bytes(b"x" * 4096)
    monkeypatch.setattr("clipsam_lib.config.load_profile", lambda name: profile)
    assert cli.main(["clean"]) == 0
    out = capsys.readouterr().out
    assert f"{paths.compile_cache_dir(profile)} (0.00 GiB): TorchInductor's compiled" in out
    assert "4 folder(s)" in out  # the cache is not one the latest run left unused
    assert cli.main(["clean", "--delete"]) == 0
    assert "removed 4 folder(s)" in capsys.readouterr().out
    assert kernels.is_dir() and not any(folder.exists() for folder in planted)
    assert cli.main(["clean", "--delete", "--compiled"]) == 0
    assert "removed 1 folder(s)" in capsys.readouterr().out
    assert not paths.compile_cache_dir(profile).exists()
    assert paths.cache_dir(profile).is_dir()  # the feature caches' root stays
