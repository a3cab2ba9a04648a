"""Download (or take a hand-downloaded archive), verify sha256, extract, index.

Links rot (the MVTec AD URL changed three times while its hash stayed the same), so the
hash is the identity of an archive and ``archive=`` accepts a file the user fetched by
hand. Every step writes to a temporary name beside its target and renames it only when
complete: an interrupted or failed run leaves nothing half-written behind, and an
existing dataset folder is never overwritten.

MTD is a git repository, not an archive: clone it (see ``SOURCES["mtd"]``), or pass a
zip of it or its folder as ``archive``. KSDD2 publishes no hash: the sha256 of the
archive we install is recorded in ``<root>/archive_sha256.json`` so later copies can be
compared with it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from clipsam_lib.data import DatasetError, default_meta_path, index_dataset
from clipsam_lib.io_utils import remove_stale_staging, write_json_atomic

CHUNK = 1 << 20
RECORD_NAME = "archive_sha256.json"


@dataclass(frozen=True)
class Source:
    """Where a dataset comes from (datasets.md)."""

    archive: str | None  # file name of the archive; None for a git repository
    url: str | None
    sha256: str | None  # None: not published (recorded on first install)
    how: str  # the layout an extracted archive must have, for error messages


SOURCES: dict[str, Source] = {
    "mvtec": Source(
        "mvtec_anomaly_detection.tar.xz",
        "https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/download/"
        "420938113-1629960298/mvtec_anomaly_detection.tar.xz",
        "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
        "<class>/test/<defect>/NNN.png",
    ),
    "visa": Source(
        "VisA_20220922.tar",
        "https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
        "2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
        "split_csv/1cls.csv and <class>/Data/Images",
    ),
    "mtd": Source(
        None,
        "https://github.com/abin24/Magnetic-tile-defect-datasets..git",
        None,
        "MT_<defect>/Imgs/<stem>.jpg",
    ),
    "ksdd2": Source("KolektorSDD2.zip", "https://go.vicos.si/kolektorsdd2", None,
                    "train/ and test/ with NNNNN.png"),
}


def sha256_file(path: Path, progress: bool = True) -> str:
    """sha256 of a file, read in chunks (archives are gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                         desc=f"sha256 {path.name}", disable=not progress) as bar:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _check_hash(name: str, archive: Path, got: str, expected: str | None, url: str | None):
    if expected is not None and got != expected:
        where = f"download it again from {url}" if url else "download it again"
        raise DatasetError(
            f"{archive} has sha256 {got} but {name} expects {expected}, so it is incomplete or "
            f"another file: {where} (or pass the right file with --archive)."
        )


def _fetch(name: str, url: str, target: Path, expected: str | None, progress: bool) -> str:
    """Stream ``url`` to a temporary file beside ``target``; rename it once verified.

    Returns the sha256, computed while streaming."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name,
                      disable=not progress) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        _check_hash(name, target, digest.hexdigest(), expected, url)
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, ValueError) as err:
        if isinstance(err, DatasetError):
            raise
        raise DatasetError(
            f"Downloading {url} failed ({err}); the link may have moved: download "
            f"{target.name} by hand and pass it with --archive."
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return digest.hexdigest()


def _macos_metadata(member: str) -> bool:
    parts = Path(member).parts
    return bool(parts) and (parts[0] == "__MACOSX" or parts[-1].startswith("._"))


def _inside(dest: Path, member: str) -> bool:
    return (dest / member).resolve().is_relative_to(dest.resolve())


def _unsafe(archive: Path, member: str) -> DatasetError:
    return DatasetError(
        f"{archive} holds the entry {member!r}, which would be written outside the target "
        f"folder; refusing to extract it: get the archive from the dataset's official source."
    )


def _extract(archive: Path, dest: Path, progress: bool) -> None:
    """Extract a zip, tar, tar.gz or tar.xz into ``dest``, refusing path traversal."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zipped:
            for info in tqdm(zipped.infolist(), desc="extract", unit="file", disable=not progress):
                if _macos_metadata(info.filename):
                    continue  # Finder's __MACOSX/ and ._ files: not part of the dataset
                if not _inside(dest, info.filename):
                    raise _unsafe(archive, info.filename)
                try:
                    zipped.extract(info, dest)
                except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
                    raise DatasetError(
                        f"{archive} is damaged: its member {info.filename!r} does not extract "
                        f"({type(err).__name__}); download the archive again."
                    ) from None
        return
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tqdm(tar, desc="extract", unit="file", disable=not progress):
                link_ok = not (member.issym() or member.islnk()) or _inside(
                    dest, os.path.join(os.path.dirname(member.name), member.linkname))
                if not _inside(dest, member.name) or not link_ok or member.isdev():
                    raise _unsafe(archive, member.name)
                tar.extract(member, dest, filter="data")
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DatasetError(f"{archive} is not a zip or tar archive, or it is truncated "
                           f"({type(err).__name__}); download it again.") from None


def _write_meta(tree: Path, name: str) -> None:
    """meta.json (and KSDD2's peer-compatible meta_peer.json); raises on a broken tree."""
    splits = ("test", "train") if name == "ksdd2" else (None,)
    indexes = {split: index_dataset(tree, name, split) for split in splits}
    for split, index in indexes.items():
        write_json_atomic(default_meta_path(tree, name, split), index)


def _layout_root(staging: Path, name: str, archive: Path) -> Path:
    """The folder of ``staging`` that holds the layout: itself or its one sub-folder."""
    entries = [p for p in staging.iterdir() if not p.name.startswith(".")]
    candidates = [staging]
    if len(entries) == 1 and entries[0].is_dir():  # e.g. a GitHub zip's <repo>-master/
        candidates.append(entries[0])
    error: DatasetError | None = None
    for candidate in candidates:
        try:
            _write_meta(candidate, name)
            return candidate
        except DatasetError as err:
            error = error or err
    # Name what is inside the archive, not the temporary folder (removed when this returns).
    detail = str(error).replace(f"{staging}{os.sep}", "").replace(str(staging), "its top level")
    raise DatasetError(
        f"{archive} does not unpack to a valid {name} tree (expected {SOURCES[name].how}): "
        f"{detail}"
    )


def _install(staging: Path, root: Path, name: str, archive: Path, digest: str | None) -> Path:
    """Index the unpacked tree, record the archive's hash, rename it onto ``root``."""
    tree = _layout_root(staging, name, archive)
    if digest is not None:
        write_json_atomic(tree / RECORD_NAME, {
            "dataset": name, "archive": archive.name, "sha256": digest,
            "published": SOURCES[name].sha256 is not None,
        })
    os.replace(tree, root)  # root is absent or an empty folder (checked before)
    return root


def _use_existing(root: Path, name: str) -> bool:
    """Index a non-empty ``root`` in place (True); False when there is nothing there yet.

    An existing folder is never overwritten: one that does not index cleanly is an error.
    """
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return False
    try:
        _write_meta(root, name)
    except DatasetError as err:
        raise DatasetError(
            f"{root} exists but is not a complete {name} tree ({str(err).rstrip('.')}); fix it, "
            f"or move it away so it can be replaced, or choose another --root."
        ) from None
    return True


def download_dataset(
    name: str,
    root: str | Path,
    archive: str | Path | None = None,
    url: str | None = None,
    *,
    progress: bool = True,
) -> Path:
    """Make ``root`` a verified, indexed copy of dataset ``name`` and return it.

    - ``root`` already holds a valid tree: it is indexed (meta.json) and left alone,
      whatever ``archive`` says (delete ``root`` to install again).
    - ``archive``: a file the user downloaded (zip/tar/tar.xz), or a folder (e.g. an MTD
      clone); its sha256 is checked against the published one.
    - otherwise the archive is downloaded (from ``url`` or ``SOURCES``) to
      ``<root's parent>/<archive name>`` (kept, so a failed extraction needs no second
      download) and verified while streaming.
    The tree is unpacked beside ``root`` and renamed onto it only when it indexes cleanly.
    """
    if name not in SOURCES:
        raise DatasetError(f"Dataset {name!r} is unknown; use one of {', '.join(SOURCES)}.")
    source = SOURCES[name]
    root = Path(root).expanduser().resolve()
    if _use_existing(root, name):  # nothing to download or extract (delete root to redo it)
        if archive is not None:
            raise DatasetError(
                f"{root} already holds a valid {name} tree, so --archive {archive} was not "
                f"used; remove {root} first to install from the archive, or drop --archive."
            )
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    for line in remove_stale_staging(root) + [str(p) for p in remove_stale_partials(root, source)]:
        warnings.warn(f"removed {line}", stacklevel=2)
    archive_path, digest = _archive_path(name, source, root, archive, url, progress)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.extract-", dir=root.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would otherwise become the dataset's mode
    try:
        if archive_path.is_dir():
            if source.sha256 is not None:
                raise DatasetError(
                    f"--archive {archive_path} is a folder, but {name} is verified by its "
                    f"archive's sha256: pass the downloaded {source.archive}, or pass an "
                    "extracted folder as --root (it is indexed in place)."
                )
            shutil.copytree(archive_path, staging, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns(".git", "__MACOSX", "._*"))
            return _install(staging, root, name, archive_path, None)
        digest = digest or sha256_file(archive_path, progress)
        try:
            _check_hash(name, archive_path, digest, source.sha256, url or source.url)
        except DatasetError as err:
            if archive is None:  # our own earlier download: never offer it to a rerun again
                archive_path.unlink(missing_ok=True)
                raise DatasetError(f"{err.args[0].rstrip('.')}; the bad file was removed, so "
                                   "the same command downloads it afresh.") from None
            raise
        _extract(archive_path, staging, progress)
        return _install(staging, root, name, archive_path, digest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_stale_partials(root: Path, source: Source) -> list[Path]:
    """Half-written downloads (``.<archive>.*.part``) a killed run left beside ``root``."""
    if source.archive is None or not root.parent.is_dir():
        return []
    stale = list(root.parent.glob(f".{source.archive}.*.part"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _archive_path(
    name: str, source: Source, root: Path, archive: str | Path | None, url: str | None,
    progress: bool,
) -> tuple[Path, str | None]:
    """The user's archive, an earlier download beside ``root``, or a fresh download.

    The second item is the sha256 when it is already known (computed while downloading).
    """
    if archive is not None:
        path = Path(archive).expanduser()
        if not path.exists():
            raise DatasetError(f"Archive {path} does not exist; check the path given to --archive.")
        return path, None
    if source.archive is None:
        raise DatasetError(
            f"{name} is a git repository, not an archive: run `git clone {source.url} {root}` "
            f"then `clipsam index --dataset {name} --root {root}` (or pass a zip or folder of "
            f"it with --archive)."
        )
    target = root.parent / source.archive
    if target.is_file():  # a previous run downloaded it: verified again by the caller
        return target, None
    return target, _fetch(name, url or source.url, target, source.sha256, progress)
