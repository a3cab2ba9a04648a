"""Where model weights come from: one place that finds, checks and names checkpoints.

A checkpoint is given by a config field (``clip.pretrained``, ``sam.checkpoint``) as a
path or a bare file name. A bare name is looked up in, in order:

1. ``$CLIPSAM_WEIGHTS_DIR`` (if set),
2. ``~/.cache/clipsam/weights``,
3. ``<project root>/weights``,
4. the package's ``mini_weights/`` (the project's own mini backbones, committed).

Files this project knows (the official SAM checkpoints, OpenAI's ViT-L/14@336px) are
checked against their published SHA-256 before use; a missing or wrong file is a
one-sentence error that says which file is expected, where to get it, its hash and where
to put it. ``None`` in a config field means random init: callers handle it explicitly and
report ``"random-init"`` as the weights identity, so it is never silent.

Hashes: the SHA-256 values below are the ones published alongside the official download
links and repeated by many independent projects (e.g. micro-sam's model registry). SAM's
file names also carry a 6-hex-digit tag (``4b8939``); it is not a prefix of the SHA-256,
and we have not been able to confirm what it is a prefix of, so it is not checked. For
OpenAI's CLIP, the SHA-256 is the path component of the official URL, which OpenAI's own
loader verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from clipsam_lib.errors import WeightsError, WeightsNotFound
from clipsam_lib.io_utils import write_json_atomic
from clipsam_lib.paths import project_root

WEIGHTS_DIR_ENV = "CLIPSAM_WEIGHTS_DIR"
# What torch.load and the model builders raise for a file that is not the checkpoint it
# should be (garbage, truncated, another model's keys or shapes).
LOAD_ERRORS = (RuntimeError, OSError, EOFError, KeyError, ValueError, pickle.UnpicklingError,
               zipfile.BadZipFile, AttributeError, IndexError)
RANDOM_INIT = "random-init"


@dataclass(frozen=True)
class KnownCheckpoint:
    """A checkpoint file with an official source and a published SHA-256."""

    kind: str  # "sam" | "clip"
    file_name: str
    url: str
    sha256: str


_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
_OPENAI_L14_336_SHA = "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02"

KNOWN_CHECKPOINTS: dict[str, KnownCheckpoint] = {
    c.file_name: c
    for c in [
        KnownCheckpoint(
            "sam", "sam_vit_h_4b8939.pth", _SAM_URL + "sam_vit_h_4b8939.pth",
            "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        ),
        KnownCheckpoint(
            "sam", "sam_vit_l_0b3195.pth", _SAM_URL + "sam_vit_l_0b3195.pth",
            "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        ),
        KnownCheckpoint(
            "sam", "sam_vit_b_01ec64.pth", _SAM_URL + "sam_vit_b_01ec64.pth",
            "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        ),
        KnownCheckpoint(
            "clip", "ViT-L-14-336px.pt",
            "https://openaipublic.azureedge.net/clip/models/"
            f"{_OPENAI_L14_336_SHA}/ViT-L-14-336px.pt",
            _OPENAI_L14_336_SHA,
        ),
    ]
}

# segment-anything's registry names -> the official checkpoint of that size.
SAM_CHECKPOINTS = {
    "vit_h": "sam_vit_h_4b8939.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_b": "sam_vit_b_01ec64.pth",
}


def weights_dirs() -> list[Path]:
    """The folders searched for a bare checkpoint file name, in order."""
    dirs = []
    env = os.environ.get(WEIGHTS_DIR_ENV)
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(Path("~/.cache/clipsam/weights").expanduser())
    dirs.append(project_root() / "weights")
    dirs.append(Path(__file__).resolve().parent / "mini_weights")
    return dirs


MINI_PRETRAINED = "mini-pretrained"


def mini_recipe_hash(path: str | os.PathLike) -> str | None:
    """The recipe hash in a mini backbone's safetensors metadata (None for other files).

    Every results row asks (provenance): the header is read once per file version.
    """
    if not str(path).endswith(".safetensors"):
        return None
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return _header_recipe_hash(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=32)
def _header_recipe_hash(path: str, size: int, mtime_ns: int) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            return (handle.metadata() or {}).get("recipe_hash")
    except (OSError, ValueError, RuntimeError):
        return None


def weights_label(kind: str, name_or_path: str | os.PathLike | None) -> str:
    """How results rows name weights: ``random-init``, ``mini-pretrained:<recipe hash>``
    for the project's mini backbones, else the file name as given."""
    if name_or_path is None:
        return RANDOM_INIT
    path = _find(Path(name_or_path).expanduser())
    recipe = mini_recipe_hash(path) if path is not None else None
    return f"{MINI_PRETRAINED}:{recipe}" if recipe else str(name_or_path)


def resolve_checkpoint(kind: str, name_or_path: str | os.PathLike, *, verify: bool = True) -> Path:
    """The checkpoint file for a config value: an existing path as given, else a search.

    ``kind`` is ``"sam"`` or ``"clip"``. Known files are checked against their published
    SHA-256 when ``verify`` is true (the hash of a file is computed once and remembered).

    Raises:
        FileNotFoundError: the file is neither at the given path nor in ``weights_dirs()``.
        ValueError: the file is known and its hash differs, or it is the other kind's file.
    """
    if kind not in ("sam", "clip"):
        raise ValueError(f"Checkpoint kind must be 'sam' or 'clip', not {kind!r}.")
    if name_or_path is None:
        raise WeightsError(
            f"No {kind} checkpoint given (None means random init, which the caller must "
            "choose explicitly)."
        )
    given = Path(name_or_path).expanduser()
    known = KNOWN_CHECKPOINTS.get(given.name)
    if known is not None and known.kind != kind:
        raise WeightsError(
            f"{given.name} is a {known.kind.upper()} checkpoint but was given as the "
            f"{kind.upper()} checkpoint; fix the {kind} section of the profile."
        )
    path = _find(given)
    if path is None:
        raise WeightsNotFound(_missing_message(kind, given, known))
    if verify and known is not None:
        actual = file_sha256(path)
        if actual != known.sha256:
            raise WeightsError(
                f"{path} has SHA-256 {actual} but {known.file_name} should have "
                f"{known.sha256}: the file is corrupt or a different model, so download it "
                f"again from {known.url} and put it in {weights_dirs()[0]}."
            )
    return path


def weights_identity(kind: str, name_or_path: str | os.PathLike | None) -> str:
    """``"random-init"`` for None, else ``"<file name>:sha256:<first 16 hex>"``.

    Resolves (and for known files verifies) the checkpoint, so it raises like
    ``resolve_checkpoint`` when the file is missing.
    """
    if name_or_path is None:
        return RANDOM_INIT
    path = resolve_checkpoint(kind, name_or_path)
    return f"{path.name}:sha256:{file_sha256(path)[:16]}"


def _find(given: Path) -> Path | None:
    if given.is_file():
        return given.resolve()
    if given.is_absolute():
        return None  # an explicit absolute path that does not exist: no guessing
    for folder in weights_dirs():
        candidate = folder / given.name
        if candidate.is_file():
            return candidate.resolve()
    return None


def _missing_message(kind: str, given: Path, known: KnownCheckpoint | None) -> str:
    where = ", ".join(str(d) for d in weights_dirs())
    field = "sam.checkpoint" if kind == "sam" else "clip.pretrained"
    if known is None:
        return (
            f"{kind.upper()} checkpoint {str(given)!r} was not found as a path nor in "
            f"[{where}]: put the file in one of those folders (or ${WEIGHTS_DIR_ENV}) or set "
            f"{field} to its full path."
        )
    return (
        f"{kind.upper()} checkpoint {known.file_name} was not found (searched {given} and "
        f"[{where}]): download it from {known.url} (SHA-256 {known.sha256}) and put it in "
        f"{weights_dirs()[0]} (or set ${WEIGHTS_DIR_ENV}, or {field} to its full path)."
    )


# -- hashing, remembered across processes -------------------------------------------------

def _hash_memo_file() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
    return base / "clipsam" / "sha256.json"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, remembered per (path, size, mtime) so 2.5 GB files hash once."""
    path = Path(path).resolve()
    stat = path.stat()
    memo_key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_file = _hash_memo_file()
    memo = _read_memo(memo_file)
    if memo_key in memo:
        return memo[memo_key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    memo[memo_key] = digest.hexdigest()
    try:
        write_json_atomic(memo_file, memo)
    except OSError:
        pass  # a read-only home only costs re-hashing next time
    return memo[memo_key]


def _read_memo(memo_file: Path) -> dict[str, str]:
    try:
        return json.loads(memo_file.read_text())
    except (OSError, ValueError):
        return {}
