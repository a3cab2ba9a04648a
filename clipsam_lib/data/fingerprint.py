"""What a dataset's files hold, as one short hash: part of the keys of UMCI runs and maps.

A trained UMCI and a folder of maps are found again by key. A key that named only the
files' paths handed back another dataset's results whenever the same paths held other
pictures: every other draw of the embedded benchmark (same layout, same file names) got
the committed draw's UMCI and maps, and so would a dataset rebuilt or relabelled in place.
So the keys name the bytes of every image and mask they depend on.

Each file is read once: its SHA-256 is remembered per (size, mtime) in
``<cache_dir>/fingerprints/<dataset>.json``, so later calls only ``stat`` the files. (The
CLIP cache's manifest remembers images the same way, but hashes their decoded pixels, per
CLIP, and never sees masks; ``weights.file_sha256`` rewrites its memo per file.)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipsam_lib import paths
from clipsam_lib.config import ProfileConfig
from clipsam_lib.data.download import sha256_file
from clipsam_lib.io_utils import write_json_atomic


class _Memo:
    """File hashes of one dataset root, remembered per (size, mtime)."""

    def __init__(self, file: Path, root: Path):
        self.file, self.root, self.changed = file, root, False
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError):
            data = {}
        self.files: dict[str, list[Any]] = (
            data.get("files", {}) if data.get("root") == str(root) else {})

    def sha256(self, rel: str) -> str:
        path = self.root / rel
        try:
            stat = path.stat()
        except OSError as err:
            raise FileNotFoundError(
                f"{path}: listed in the dataset's index but not readable ({err.strerror}); "
                f"restore the file or rebuild the index (clipsam index)") from err
        known = self.files.get(rel)
        if known is not None and known[:2] == [stat.st_size, stat.st_mtime_ns]:
            return known[2]
        digest = sha256_file(path, progress=False)
        self.files[rel] = [stat.st_size, stat.st_mtime_ns, digest]
        self.changed = True
        return digest

    def save(self) -> None:
        if not self.changed:
            return
        try:
            write_json_atomic(self.file, {"root": str(self.root), "files": self.files})
        except OSError:
            pass  # a read-only cache only costs hashing again next time


def records_fingerprint(profile: ProfileConfig, dataset_name: str,
                        records: Sequence[dict[str, Any]]) -> str:
    """Hash of the records' paths, labels and the bytes of their images and masks."""
    root = paths.dataset_root(profile, dataset_name)
    memo = _Memo(paths.cache_dir(profile) / "fingerprints" / f"{dataset_name}.json", root)
    entries = [
        [rec["img_path"], memo.sha256(rec["img_path"]), rec.get("mask_path") or "",
         memo.sha256(rec["mask_path"]) if rec.get("mask_path") else "", rec["cls_name"],
         rec.get("anomaly")]
        for rec in records
    ]
    memo.save()
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]
