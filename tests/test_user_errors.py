"""Every fault a user can cause: one clear line naming the file, key or folder and the fix,
found before the work starts where it can be, and nothing already written changed."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tarfile
import time
import unicodedata
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic_defects import tiny_profile, training_interrupted_in_epoch

from clipsam_lib import cli, io_utils, runner, train
from clipsam_lib.config import ConfigError, load_profile
from clipsam_lib.data import DatasetError, index_dataset, load_or_build_index
from clipsam_lib.data.download import SOURCES, Source, download_dataset
from clipsam_lib.errors import DiskError, PreflightFailed, UserError, WeightsError
from clipsam_lib.features import FeatureCache
from clipsam_lib.modeling.sam_backbone import build_sam
from clipsam_lib.preflight import preflight
from clipsam_lib.workspace import Workspace

SMALL_MVTEC = {"bottle": (2, 3, 1, ["crack", "hole"])}


def one_line(err: BaseException) -> str:
    message = str(err.args[0] if err.args else err)
    assert "\n" not in message, message
    return message


def _old(path: Path, seconds: float = 3600) -> None:
    """Make a folder (and what it holds) look ``seconds`` old."""
    past = time.time() - seconds
    for p in [path, *path.rglob("*")]:
        os.utime(p, (past, past))


# -- weights ------------------------------------------------------------------------------------


def _paper_like(tmp_path, **overrides):
    """The smoke profile with a SAM checkpoint file named, under tmp_path."""
    return tiny_profile(tmp_path, **{"sam.checkpoint": str(tmp_path / "sam_custom.pth"),
                                     **overrides})


def test_missing_sam_checkpoint_is_found_by_the_preflight(tmp_path):
    report = preflight(_paper_like(tmp_path))
    assert len(report.problems) == 1 and "sam_custom.pth" in report.problems[0]
    with pytest.raises(PreflightFailed, match="1 problem"):
        report.raise_for_problems()


def test_garbage_checkpoints_are_named_with_the_fix(tmp_path):
    garbage = tmp_path / "sam_custom.pth"
    garbage.write_bytes(b"this is not a checkpoint at all" * 10)
    report = preflight(_paper_like(tmp_path))
    assert any("sam_custom.pth" in p and "not a PyTorch checkpoint" in p
               for p in report.problems)
    cfg = _paper_like(tmp_path).sam
    cfg.model_type = "tiny"
    with pytest.raises(WeightsError) as err:
        build_sam(cfg)
    message = one_line(err.value)
    assert str(garbage) in message and "download it again" in message
    assert "weights_only=False" not in message


def test_corrupt_last_checkpoint_falls_back_to_the_newest_epoch_file(tmp_path):
    profile = tiny_profile(tmp_path, **{"train.epochs": {"mvtec": 2, "visa": 2}})
    ws = Workspace(profile)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random.*")
        with training_interrupted_in_epoch(1):
            train.train_umci(ws, "src", progress=False)
        folder = train.run_dir(ws, "src")
        (folder / "last.pt").write_bytes(b"truncated")
        with pytest.warns(UserWarning, match=r"last.pt is unreadable; resuming from epoch_001"):
            result = train.train_umci(ws, "src", progress=False)
    assert result.resumed_from == 1 and result.epochs == 2
    assert torch.load(result.checkpoint, weights_only=True)["epoch"] == 2


# -- disks --------------------------------------------------------------------------------------


def test_full_disk_while_writing_a_cache_entry_names_the_entry(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path / "cache", {"model": "m"})
    cache.put("a" * 32, {"x": torch.ones(3)})
    before = cache.path("a" * 32).read_bytes()

    def full(*_args, **_kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskError) as err:
        cache.put("a" * 32, {"x": torch.zeros(3)})
    message = one_line(err.value)
    assert str(cache.path("a" * 32)) in message and ".tmp" not in message
    assert "full" in message and "cache_dir" in message
    assert cache.path("a" * 32).read_bytes() == before  # nothing already written changed
    assert not list(cache.dir.rglob("*.tmp"))


def test_enospc_and_read_only_folders_are_one_line(tmp_path, monkeypatch):
    target = tmp_path / "results" / "table.csv"
    io_utils.write_text_atomic(target, "old\n")

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", no_space)
    with pytest.raises(DiskError, match=r"Cannot write .*table.csv: no space is left"):
        io_utils.write_text_atomic(target, "new\n")
    monkeypatch.undo()
    assert target.read_text() == "old\n"

    def read_only(*_args, **_kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(io_utils.tempfile, "mkstemp", read_only)
    with pytest.raises(DiskError) as err:
        io_utils.write_json_atomic(tmp_path / "out" / "x.json", {})
    assert "x.json: the file system is read-only" in one_line(err.value)


def test_unwritable_results_folder_is_found_by_the_preflight(tmp_path, monkeypatch):
    import clipsam_lib.preflight as pre

    real = pre.tempfile.NamedTemporaryFile

    def refuse(*args, **kwargs):
        if str(kwargs.get("dir")).endswith("results/smoke"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, **kwargs)

    monkeypatch.setattr(pre.tempfile, "NamedTemporaryFile", refuse)
    report = preflight(tiny_profile(tmp_path))
    assert len(report.problems) == 1
    assert "results" in report.problems[0]
    assert "is not writable (Permission denied)" in report.problems[0]


def test_a_dataset_on_read_only_storage_is_indexed_into_the_cache(tmp_path, data_trees,
                                                                  monkeypatch):
    root = data_trees.mvtec(tmp_path / "ro" / "mvtec", SMALL_MVTEC)
    real_write = io_utils.write_json_atomic

    def read_only_root(path, data):
        if Path(path).parent == root:
            raise DiskError(f"Cannot write {path}: the file system is read-only; ...")
        return real_write(path, data)

    import clipsam_lib.data as data_module

    monkeypatch.setattr(data_module, "write_json_atomic", read_only_root)
    fallback = tmp_path / "cache" / "indexes"
    index = load_or_build_index(root, "mvtec", fallback_dir=fallback)
    assert not (root / "meta.json").exists() and len(list(fallback.glob("*.json"))) == 1
    with pytest.raises(DatasetError, match="cannot be written.*writable cache_dir"):
        load_or_build_index(root, "mvtec", rebuild=True)  # and no fallback folder given
    monkeypatch.setattr(data_module, "index_dataset", lambda *a, **k: pytest.fail("re-indexed"))
    assert load_or_build_index(root, "mvtec", fallback_dir=fallback) == index


# -- archives -----------------------------------------------------------------------------------


@pytest.fixture
def mvtec_zip(tmp_path, data_trees, monkeypatch):
    tree = data_trees.mvtec(tmp_path / "src", SMALL_MVTEC)
    archive = tmp_path / "mvtec_anomaly_detection.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for path in sorted(tree.rglob("*")):
            if path.is_file():
                zipped.write(path, path.relative_to(tree).as_posix())
        zipped.writestr("__MACOSX/bottle/._000.png", b"\x00\x05\x16\x07 finder metadata")
        zipped.writestr("bottle/._license.txt", b"AppleDouble")
    register = lambda path: monkeypatch.setitem(
        SOURCES, "mvtec", Source(path.name, path.as_uri(),
                                 hashlib.sha256(path.read_bytes()).hexdigest(), "<class>/test"))
    register(archive)
    return archive, register


def test_macos_zip_installs_without_its_metadata(tmp_path, mvtec_zip):
    archive, _ = mvtec_zip
    root = download_dataset("mvtec", tmp_path / "mvtec", archive=archive, progress=False)
    assert not (root / "__MACOSX").exists() and not list(root.rglob("._*"))
    assert len(json.loads((root / "meta.json").read_text())["test"]["bottle"]) == 3


def test_zip_with_a_corrupt_member_names_the_member(tmp_path, mvtec_zip):
    archive, register = mvtec_zip
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zipped:
        info = zipped.getinfo("bottle/license.txt") if "bottle/license.txt" in \
            zipped.namelist() else zipped.infolist()[1]
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start:start + 4] = b"\xff\xff\xff\xff"  # garble the member's compressed bytes
    archive.write_bytes(bytes(data))
    register(archive)
    root = tmp_path / "mvtec"
    with pytest.raises(DatasetError) as err:
        download_dataset("mvtec", root, archive=archive, progress=False)
    message = one_line(err.value)
    assert info.filename in message and "download the archive again" in message
    assert not root.exists() and not list(tmp_path.glob(".mvtec.extract-*"))


def test_folder_as_archive_and_archive_beside_a_valid_root(tmp_path, mvtec_zip, data_trees):
    archive, _ = mvtec_zip
    with pytest.raises(DatasetError, match=r"is a folder, but mvtec is verified by its archive"):
        download_dataset("mvtec", tmp_path / "x", archive=tmp_path / "src", progress=False)
    root = download_dataset("mvtec", tmp_path / "mvtec", archive=archive, progress=False)
    with pytest.raises(DatasetError, match=r"already holds a valid mvtec tree, so --archive"):
        download_dataset("mvtec", root, archive=archive, progress=False)


def test_stale_partials_and_a_bad_earlier_download_are_not_reused(tmp_path, mvtec_zip):
    archive, _ = mvtec_zip
    root = tmp_path / "data" / "mvtec"
    root.parent.mkdir()
    partial = root.parent / f".{archive.name}.abc123.part"
    partial.write_bytes(b"half")
    stale = root.parent / ".mvtec.extract-old1"
    (stale / "bottle").mkdir(parents=True)
    (stale / "bottle" / "x.png").write_bytes(b"x" * 100)
    _old(stale)
    bad_earlier = root.parent / archive.name
    bad_earlier.write_bytes(b"a truncated earlier download")
    with pytest.warns(UserWarning, match="removed"), pytest.raises(DatasetError) as err:
        download_dataset("mvtec", root, progress=False)
    assert "the bad file was removed" in one_line(err.value)
    assert not partial.exists() and not stale.exists() and not bad_earlier.exists()


def test_stale_staging_folders_are_removed_at_the_next_start_and_said(tmp_path):
    profile = tiny_profile(tmp_path)
    stale = tmp_path / ".src.extract-dead"
    stale.mkdir()
    (stale / "big.bin").write_bytes(b"0" * 2048)
    live = tmp_path / ".dst.build-running"
    live.mkdir()  # changed just now: another process may still be building it
    _old(stale)
    report = preflight(profile)
    assert not stale.exists() and live.exists()
    assert len(report.cleaned) == 1 and ".src.extract-dead" in report.cleaned[0]


def test_synthetic_build_removes_a_killed_builds_staging(tmp_path):
    from clipsam_lib.data.synthetic import build_dataset

    stale = tmp_path / ".synth_mvtec.build-x1"
    stale.mkdir()
    _old(stale)
    with pytest.warns(UserWarning, match=r"removed .*\.synth_mvtec\.build-x1"):
        build_dataset(tmp_path / "synth_mvtec", "mvtec", scale="tiny")
    assert not stale.exists()


# -- datasets -----------------------------------------------------------------------------------


def test_a_truncated_png_passes_the_index_but_not_the_deep_preflight(tmp_path):
    profile = tiny_profile(tmp_path)
    victim = tmp_path / "src" / "felt" / "test" / "good" / "001.png"
    victim.write_bytes(victim.read_bytes()[:200])
    assert preflight(profile).ok  # headers only: the index still builds
    report = preflight(profile, deep=True)
    assert len(report.problems) == 1 and "001.png is corrupt" in report.problems[0]


def _visa(tmp_path, data_trees, rows_edit):
    root = data_trees.visa(tmp_path / "visa", {"candle": (1, 1, 1)}, palette_class=None)
    csv_path = root / "split_csv" / "1cls.csv"
    csv_path.write_bytes(rows_edit(csv_path.read_bytes()))
    return root


@pytest.mark.parametrize("edit, says", [
    (lambda b: b.splitlines(keepends=True)[0], "has a header but no rows"),
    (lambda b: b + b.splitlines(keepends=True)[-1], "lines 4 and 5 both list"),
    (lambda b: b.replace(b"candle,train", "candlé,train".encode("latin-1")),
     "is not UTF-8 text (byte 0xe9"),
    (lambda b: b.replace(b"candle/Data/Images/Normal/0000.JPG", b"/etc/passwd"),
     "names '/etc/passwd', which is absolute"),
    (lambda b: b.replace(b"candle/Data/Images/Normal/0000.JPG", b"../elsewhere/0000.JPG"),
     "which is outside the dataset root"),
])
def test_broken_split_files_are_one_line_with_the_file(tmp_path, data_trees, edit, says):
    root = _visa(tmp_path, data_trees, edit)
    with pytest.raises(DatasetError) as err:
        index_dataset(root, "visa")
    message = one_line(err.value)
    assert says in message and "1cls.csv" in message


def test_unicode_normalization_differences_are_resolved(tmp_path, data_trees):
    root = data_trees.visa(tmp_path / "visa", {"candle": (1, 1, 1)}, palette_class=None)
    nfd = unicodedata.normalize("NFD", "Crème")
    nfc = unicodedata.normalize("NFC", "Crème")
    (root / "candle" / "Data" / "Images" / "Normal").rename(
        root / "candle" / "Data" / "Images" / nfd)
    csv_path = root / "split_csv" / "1cls.csv"
    csv_path.write_text(csv_path.read_text().replace("Images/Normal", f"Images/{nfc}"))
    index = index_dataset(root, "visa")
    normal = [r for r in index["test"]["candle"] if not r["anomaly"]]
    assert normal and (root / normal[0]["img_path"]).is_file()


def test_a_root_that_is_a_file_says_so(tmp_path):
    archive = tmp_path / "mvtec_anomaly_detection.tar.xz"
    with tarfile.open(archive, "w:xz"):
        pass
    with pytest.raises(DatasetError, match=r"is a file, not a folder.*--archive"):
        index_dataset(archive, "mvtec")


# -- the run and the command line ---------------------------------------------------------------


def _no_notebook(monkeypatch):
    monkeypatch.setattr(runner, "run_notebook",
                        lambda *a, **k: pytest.fail("a notebook ran despite the problem"))


def test_bad_value_missing_checkpoint_and_unwritable_results_stop_the_run_first(
    tmp_path, monkeypatch, capsys
):
    _no_notebook(monkeypatch)
    bad = tmp_path / "bad.yaml"
    bad.write_text("mmr:\n  threshold: 1.5\n")
    assert cli.main(["run", "--profile", str(bad)]) == 2
    assert "mmr.threshold = 1.5 must be in [0, 1)" in capsys.readouterr().err

    missing = tmp_path / "missing.yaml"
    missing.write_text(f"sam:\n  model_type: tiny\n  checkpoint: {tmp_path / 'nope.pth'}\n"
                       f"data_dir: {tmp_path / 'data'}\ncache_dir: {tmp_path / 'cache'}\n")
    assert cli.main(["run", "--profile", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "nope.pth" in err and "before any work" in err

    monkeypatch.setattr("clipsam_lib.preflight.writable_problem",
                        lambda folder, what: f"{folder} ({what}) is not writable" if
                        "results" in what else None)
    ok = tmp_path / "ok.yaml"
    ok.write_text(f"data_dir: {tmp_path / 'data'}\ncache_dir: {tmp_path / 'cache'}\n"
                  "datasets: []\ndirections: []\nclip: {pretrained: null}\n"
                  "sam: {checkpoint: null, model_type: tiny}\n")
    assert cli.main(["run", "--profile", str(ok)]) == 2
    assert "results folder) is not writable" in capsys.readouterr().err


def test_check_prints_what_a_run_would_use(tmp_path, capsys):
    profile_file = tmp_path / "p.yaml"
    profile_file.write_text(f"data_dir: {tmp_path / 'data'}\ncache_dir: {tmp_path / 'cache'}\n"
                            "clip: {pretrained: null}\nsam: {checkpoint: null, model_type: tiny}\n"
                            "datasets: [{name: synth_mvtec, layout: mvtec, root: synth_mvtec, "
                            "synthetic: true}]\ndirections: []\n")
    assert cli.main(["check", "--profile", str(profile_file)]) == 0
    out = capsys.readouterr().out
    assert "random init" in out and "synth_mvtec" in out and "GiB free" in out
    assert "no problem found" in out


def test_library_bugs_keep_their_traceback(monkeypatch, capsys):
    def bug(*_args, **_kwargs):
        raise KeyError("an internal key")  # not a user error: a bug

    monkeypatch.setattr("clipsam_lib.preflight.preflight", bug)
    with pytest.raises(KeyError, match="an internal key"):
        cli.main(["check", "--profile", "smoke"])
    assert issubclass(DatasetError, UserError) and issubclass(ConfigError, UserError)
    assert issubclass(WeightsError, UserError) and issubclass(DiskError, UserError)


def test_an_empty_dataset_name_or_root_fails_at_load(tmp_path):
    empty = tmp_path / "e.yaml"
    empty.write_text("datasets:\n  - {name: '', layout: mvtec, root: ''}\ndirections: []\n")
    with pytest.raises(ConfigError) as err:
        load_profile(empty)
    assert "datasets[0].name" in str(err.value) and "datasets[0].root" in str(err.value)


def test_mask_threshold_reads_raw_values_for_the_deep_check(tmp_path):
    mask = np.zeros((4, 4), np.uint8)
    mask[1, 1] = 1
    Image.fromarray(mask).save(tmp_path / "m.png")
    from clipsam_lib.data.io import read_mask

    assert read_mask(tmp_path / "m.png", 0.0, "raw").sum() == 1


def test_the_preflight_counts_each_map_as_its_rough_map_and_changed_pixels(tmp_path):
    """A map is stored as its S x S rough map plus the pixels MMR changed at the image's
    own size (float32), so the disk estimate adds up the test images' pixels, counted
    here by decoding every file."""
    import clipsam_lib.preflight as pre
    from clipsam_lib.data.io import read_image_rgb

    profile = tiny_profile(tmp_path).replace(directions=[{"train": "src", "test": ["dst"]}])
    images, pixels = pre._check_datasets(profile, pre.Preflight(profile.name), deep=False)
    tested = {name for d in profile.directions for name in d.test + d.generalization}
    assert tested == {"dst"}
    by_hand = 0
    for name in tested:
        files = sorted((tmp_path / name).glob("*/test/*/*.png"))
        assert len(files) == images[name]
        decoded = sum(int(np.prod(read_image_rgb(f).shape[:2])) for f in files)
        assert pixels[name] == decoded
        by_hand += decoded
    assert by_hand > 0
    weights = 4 * sum(t.numel() for t in train.init_umci(profile).state_dict().values())
    runs = 13 + 2 * len(profile.spread_draws)  # one direction, one seed
    side = profile.clip.image_size
    maps = int(30 * 4 * (images["dst"] * side * side + 0.1 * by_hand))
    assert pre.estimated_bytes(profile, images, pixels)["results"] == maps + runs * weights


def test_the_preflight_counts_the_kept_umci_checkpoints_of_every_run(tmp_path):
    """A finished run keeps final.pt and the eval_epochs' files: the estimate is checked
    against the bytes a real run leaves on disk (torch.save adds a header per tensor)."""
    import clipsam_lib.preflight as pre

    profile = tiny_profile(tmp_path, **{"train.eval_epochs": [1], "spread_draws": []}).replace(
        directions=[{"train": "src", "test": ["dst"]}])
    result = train.train_umci(profile, "src", progress=False)
    on_disk = sum(f.stat().st_size for f in result.run_dir.glob("*.pt"))
    per_run = pre.umci_checkpoint_bytes(profile) / 13
    assert per_run <= on_disk < 1.1 * per_run  # a tiny UMCI: ~8% of headers
