"""Provenance: the columns every results file carries, so a row says how it was made."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import subprocess
from functools import lru_cache
from typing import Any

from clipsam_lib.config import ProfileConfig
from clipsam_lib.devices import device_name
from clipsam_lib.paths import project_root
from clipsam_lib.weights import MINI_PRETRAINED, RANDOM_INIT, weights_label


@lru_cache(maxsize=1)
def git_commit() -> str:
    """Short commit of the checkout, with ``+dirty`` when its code has local changes.

    Changes under ``results/`` do not count: the committed tables are rewritten by every
    run, and a re-run must not call its own output a local change.
    """
    try:
        root = project_root()
        commit = subprocess.run(
            ["git", "rev-parse", "--short=10", "HEAD"], cwd=root, capture_output=True,
            text=True, check=True, timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
             ":(exclude)results"], check=False, cwd=root,
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def weights_identity(profile: ProfileConfig) -> str:
    """``clip=<...>;sam=<...>``: each side the checkpoint name, ``random-init``, or
    ``mini-pretrained:<recipe hash>`` for the project's own mini backbones."""
    clip = weights_label("clip", profile.clip.pretrained)
    sam = weights_label("sam", profile.sam.checkpoint)
    return f"clip={profile.clip.model_name}:{clip};sam={profile.sam.model_type}:{sam}"


def is_random_init(profile: ProfileConfig) -> bool:
    return profile.clip.pretrained is None or profile.sam.checkpoint is None


def weights_kind(profile: ProfileConfig) -> str:
    """``random-init`` (either side), ``mini-pretrained`` (the project's synthetic-data
    backbones on either side) or ``pretrained`` (the real weights on both)."""
    if is_random_init(profile):
        return RANDOM_INIT
    labels = (weights_label("clip", profile.clip.pretrained),
              weights_label("sam", profile.sam.checkpoint))
    return MINI_PRETRAINED if any(x.startswith(MINI_PRETRAINED) for x in labels) else "pretrained"


# What a table says about rows made with each kind of weights.
WEIGHTS_NOTES = {
    RANDOM_INIT: "random-init backbones: plumbing, not the paper's numbers",
    MINI_PRETRAINED: "the project's mini backbones, pretrained on synthetic data: the method "
                     "in miniature, not the paper's numbers",
    "pretrained": "",
}


def index_hash(index: dict[str, Any]) -> str:
    """Hash of a dataset index (meta.json content): which files, labels and masks."""
    blob = json.dumps(index, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


# The columns ``provenance_columns`` writes, in its order: what a derived table (draws,
# claims) carries over from the rows it is made of.
COLUMNS = ("profile", "config_hash", "git_commit", "weights", "dataset_index_hash",
           "protocol", "device", "dtype", "date")


def provenance_columns(
    profile: ProfileConfig,
    *,
    protocol: str | None = None,
    dataset_index_hash: str | None = None,
    config_hash: str | None = None,
) -> dict[str, str]:
    """The provenance fields of one results row.

    ``config_hash`` defaults to the profile's hash; pass the hash of a variant's config
    when a row was produced with switches changed from the profile.
    """
    return {
        "profile": profile.name,
        "config_hash": config_hash or profile.hash(),
        "git_commit": git_commit(),
        "weights": weights_identity(profile),
        "dataset_index_hash": dataset_index_hash or "",
        "protocol": protocol or profile.eval.protocol,
        "device": device_name(profile.device),
        "dtype": f"clip={profile.clip.dtype};sam={profile.sam.dtype}",
        "date": _dt.date.today().isoformat(),
    }
