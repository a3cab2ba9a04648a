"""download_dataset on small archives built here: sha256, extraction, layout, safety."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import urllib.request
import zipfile
from pathlib import Path
from typing import ClassVar

import pytest

from clipsam_lib import cli
from clipsam_lib.data import download
from clipsam_lib.data.download import SOURCES, Source, download_dataset

SMALL_MVTEC = {"bottle": (2, 3, 1, ["crack", "hole"]), "grid": (1, 2, 1, ["bent"])}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tar(tree: Path, out: Path, mode: str = "w:xz", prefix: str = "") -> Path:
    with tarfile.open(out, mode) as tar:
        for path in sorted(tree.rglob("*")):
            tar.add(path, arcname=prefix + path.relative_to(tree).as_posix(), recursive=False)
    return out


def _zip(tree: Path, out: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(out, "w") as zipped:
        for path in sorted(tree.rglob("*")):
            if path.is_file():
                zipped.write(path, prefix + path.relative_to(tree).as_posix())
    return out


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def mvtec_archive(tmp_path, data_trees, monkeypatch):
    """A small MVTec-layout tar.xz registered (URL + hash) in place of the real one."""
    tree = data_trees.mvtec(tmp_path / "src", SMALL_MVTEC)
    archive = _tar(tree, tmp_path / "mvtec_anomaly_detection.tar.xz")
    monkeypatch.setitem(SOURCES, "mvtec", Source(
        archive.name, archive.as_uri(), _sha256(archive), "<class>/test/<defect>/NNN.png"))
    return archive


def test_download_verifies_extracts_and_indexes(tmp_path, mvtec_archive):
    root = tmp_path / "data" / "mvtec_anomaly_detection"
    assert download_dataset("mvtec", root, progress=False) == root.resolve()
    meta = json.loads((root / "meta.json").read_text())
    assert sorted(meta["test"]) == ["bottle", "grid"] and len(meta["test"]["bottle"]) == 3
    record = json.loads((root / "archive_sha256.json").read_text())
    assert record["sha256"] == _sha256(mvtec_archive) and record["published"] is True
    kept = root.parent / mvtec_archive.name  # kept: a failed extraction needs no re-download
    assert _sha256(kept) == _sha256(mvtec_archive)
    assert _leftovers(root.parent) == []


def test_ready_root_is_only_indexed(tmp_path, mvtec_archive, monkeypatch):
    root = tmp_path / "mvtec"
    download_dataset("mvtec", root, archive=mvtec_archive, progress=False)
    (root / "meta.json").unlink()
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("downloaded"))
    monkeypatch.setattr(download, "_extract", lambda *a: pytest.fail("extracted again"))
    download_dataset("mvtec", root, progress=False)
    assert (root / "meta.json").is_file()
    with pytest.raises(download.DatasetError, match="so --archive .* was not used"):
        download_dataset("mvtec", root, archive=mvtec_archive, progress=False)


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
def test_hand_downloaded_archive_in_other_formats(tmp_path, data_trees, monkeypatch, kind):
    tree = data_trees.mvtec(tmp_path / "src", SMALL_MVTEC)
    out = tmp_path / f"mvtec.{kind}"
    archive = _zip(tree, out) if kind == "zip" else _tar(tree, out, "w:gz" if kind == "tar.gz"
                                                         else "w")
    monkeypatch.setitem(SOURCES, "mvtec", Source("x.tar.xz", None, _sha256(archive), "..."))
    root = download_dataset("mvtec", tmp_path / "root", archive=archive, progress=False)
    assert len(json.loads((root / "meta.json").read_text())["test"]["grid"]) == 2


def test_wrong_hash_is_a_clear_error_and_writes_nothing(tmp_path, mvtec_archive, monkeypatch):
    expected = "0" * 64
    monkeypatch.setitem(SOURCES, "mvtec", Source(mvtec_archive.name, None, expected, "..."))
    root = tmp_path / "data" / "mvtec"
    with pytest.raises(download.DatasetError) as err:
        download_dataset("mvtec", root, archive=mvtec_archive, progress=False)
    message = str(err.value)
    assert f"has sha256 {_sha256(mvtec_archive)} but mvtec expects {expected}" in message
    assert "--archive" in message and "\n" not in message
    assert not root.exists() and _leftovers(root.parent) == []
    assert mvtec_archive.is_file()  # the user's file is left alone


def test_wrong_hash_while_downloading_keeps_no_file(tmp_path, mvtec_archive, monkeypatch):
    monkeypatch.setitem(SOURCES, "mvtec", Source(mvtec_archive.name, mvtec_archive.as_uri(),
                                                 "f" * 64, "..."))
    root = tmp_path / "data" / "mvtec"
    with pytest.raises(download.DatasetError, match="download it again from file://"):
        download_dataset("mvtec", root, progress=False)
    assert sorted(p.name for p in root.parent.iterdir()) == []


def test_interrupted_download_leaves_nothing(tmp_path, mvtec_archive, monkeypatch):
    class Broken(io.BytesIO):
        headers: ClassVar[dict[str, str]] = {"Content-Length": "999999"}

        def read(self, size=-1):
            if self.tell() > 100:
                raise ConnectionResetError("connection reset by peer")
            return super().read(50)

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Broken(b"x" * 1000))
    root = tmp_path / "data" / "mvtec"
    with pytest.raises(download.DatasetError, match="failed .*connection reset.*--archive"):
        download_dataset("mvtec", root, progress=False)
    assert list(root.parent.iterdir()) == []


def test_path_traversal_is_refused(tmp_path, data_trees, monkeypatch):
    tree = data_trees.mvtec(tmp_path / "src", SMALL_MVTEC)
    evil_tar = tmp_path / "evil.tar"
    _tar(tree, evil_tar, "w")
    with tarfile.open(evil_tar, "a") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    evil_zip = _zip(tree, tmp_path / "evil.zip")
    with zipfile.ZipFile(evil_zip, "a") as zipped:
        zipped.writestr("bottle/../../escaped.txt", "evil")
    for archive in (evil_tar, evil_zip):
        monkeypatch.setitem(SOURCES, "mvtec", Source("x", None, _sha256(archive), "..."))
        root = tmp_path / "out" / "mvtec"
        with pytest.raises(download.DatasetError, match="outside the target folder"):
            download_dataset("mvtec", root, archive=archive, progress=False)
        assert not (tmp_path / "out" / "escaped.txt").exists()
        assert not (tmp_path / "escaped.txt").exists()
        assert not root.exists() and _leftovers(root.parent) == []


def test_symlink_out_of_the_tree_is_refused(tmp_path, data_trees, monkeypatch):
    tree = data_trees.mvtec(tmp_path / "src", SMALL_MVTEC)
    archive = _tar(tree, tmp_path / "link.tar", "w")
    with tarfile.open(archive, "a") as tar:
        info = tarfile.TarInfo("bottle/link")
        info.type, info.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
        tar.addfile(info)
    monkeypatch.setitem(SOURCES, "mvtec", Source("x", None, _sha256(archive), "..."))
    with pytest.raises(download.DatasetError, match="'bottle/link'.*outside"):
        download_dataset("mvtec", tmp_path / "out", archive=archive, progress=False)


def test_truncated_and_non_archives(tmp_path, mvtec_archive, monkeypatch):
    cut = tmp_path / "cut.tar.xz"
    cut.write_bytes(mvtec_archive.read_bytes()[:-200])
    text = tmp_path / "page.html"
    text.write_text("<html>moved</html>")
    for bad, pattern in ((cut, "truncated"), (text, "not a zip or tar archive")):
        monkeypatch.setitem(SOURCES, "mvtec", Source("x", None, _sha256(bad), "..."))
        root = tmp_path / "out" / "mvtec"
        with pytest.raises(download.DatasetError, match=pattern):
            download_dataset("mvtec", root, archive=bad, progress=False)
        assert not root.exists() and _leftovers(root.parent) == []


def test_archive_with_the_wrong_layout(tmp_path, data_trees, monkeypatch):
    visa = data_trees.visa(tmp_path / "visa", {"candle": (1, 1, 1)})
    archive = _tar(visa, tmp_path / "visa.tar", "w")
    monkeypatch.setitem(SOURCES, "mvtec", Source("x", None, None, "<class>/test/<defect>/NNN.png"))
    root = tmp_path / "out" / "mvtec"
    with pytest.raises(download.DatasetError,
                       match=r"does not unpack to a valid mvtec tree \(expected <class>/test"):
        download_dataset("mvtec", root, archive=archive, progress=False)
    assert not root.exists()


def test_existing_folder_is_never_overwritten(tmp_path, mvtec_archive):
    root = tmp_path / "mvtec"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    with pytest.raises(download.DatasetError,
                       match=r"exists but is not a complete mvtec tree \(.*not an MVTec AD tree"):
        download_dataset("mvtec", root, archive=mvtec_archive, progress=False)
    assert [p.name for p in root.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is fine to fill
    download_dataset("mvtec", empty, archive=mvtec_archive, progress=False)
    assert (empty / "meta.json").is_file()


def test_ksdd2_records_its_own_hash(tmp_path, data_trees):
    tree = data_trees.ksdd2(tmp_path / "src", {"train": (3, 1), "test": (2, 1)})
    archive = _zip(tree, tmp_path / "KolektorSDD2.zip")
    assert SOURCES["ksdd2"].sha256 is None  # none published
    root = download_dataset("ksdd2", tmp_path / "KolektorSDD2", archive=archive, progress=False)
    record = json.loads((root / "archive_sha256.json").read_text())
    assert record == {"dataset": "ksdd2", "archive": "KolektorSDD2.zip",
                      "sha256": _sha256(archive), "published": False}
    assert len(json.loads((root / "meta.json").read_text())["test"]["ksdd2"]) == 2
    assert len(json.loads((root / "meta_peer.json").read_text())["test"]["ksdd2"]) == 3


def test_mtd_needs_git_or_accepts_a_zip_or_folder(tmp_path, data_trees):
    with pytest.raises(download.DatasetError, match=r"git repository.*git clone https://github"):
        download_dataset("mtd", tmp_path / "mtd", progress=False)
    clone = data_trees.mtd(tmp_path / "clone", {"Crack": 2, "Free": 3})
    (clone / ".git").mkdir()
    (clone / ".git" / "HEAD").write_text("ref: refs/heads/master\n")
    root = download_dataset("mtd", tmp_path / "from_folder", archive=clone, progress=False)
    assert not (root / ".git").exists() and (root / "meta.json").is_file()
    github_zip = _zip(clone, tmp_path / "master.zip", prefix="Magnetic-tile-defect-datasets.-master/")
    root = download_dataset("mtd", tmp_path / "from_zip", archive=github_zip, progress=False)
    assert (root / "MT_Crack").is_dir()  # the zip's single top folder was hoisted
    assert len(json.loads((root / "meta.json").read_text())["test"]["mtd"]) == 5


def test_missing_archive_and_unknown_dataset(tmp_path):
    with pytest.raises(download.DatasetError, match="nope.zip does not exist; check the path"):
        download_dataset("ksdd2", tmp_path / "k", archive=tmp_path / "nope.zip")
    with pytest.raises(download.DatasetError, match="'mpdd' is unknown"):
        download_dataset("mpdd", tmp_path / "m")


def test_cli_download(tmp_path, mvtec_archive, monkeypatch, capsys):
    root = tmp_path / "ok"
    assert cli.main(["download", "--dataset", "mvtec", "--root", str(root),
                     "--archive", str(mvtec_archive)]) == 0
    assert (root / "meta.json").is_file()
    monkeypatch.setitem(SOURCES, "mvtec", Source("x", None, "1" * 64, "..."))
    code = cli.main(["download", "--dataset", "mvtec", "--root", str(tmp_path / "bad"),
                     "--archive", str(mvtec_archive)])
    err = capsys.readouterr().err  # progress bars first, then the one-line error
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(error_lines) == 1 and err.endswith(error_lines[0] + "\n")
    assert error_lines[0].startswith("clipsam download: error:") and "expects 1111" in err
