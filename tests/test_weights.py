"""Checkpoint resolution: search order, hash checks, and one-sentence errors."""

from __future__ import annotations

import hashlib

import pytest

from clipsam_lib import weights
from clipsam_lib.weights import KnownCheckpoint, resolve_checkpoint, weights_identity


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    """Weights dir from the environment, hash memo in a temporary cache home."""
    monkeypatch.setenv("CLIPSAM_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "weights").mkdir()
    return tmp_path / "weights"


def test_missing_known_checkpoint_names_file_source_hash_and_place(isolated_dirs):
    with pytest.raises(FileNotFoundError) as err:
        resolve_checkpoint("sam", "sam_vit_h_4b8939.pth")
    message = str(err.value)
    assert "sam_vit_h_4b8939.pth" in message
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth" in message
    assert "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e" in message
    assert str(isolated_dirs) in message
    assert message.count(". ") == 0 and "\n" not in message  # one sentence


def test_bare_name_is_found_in_the_weights_dir_and_paths_are_taken_as_given(
    isolated_dirs, tmp_path
):
    (isolated_dirs / "custom_clip.pt").write_bytes(b"weights")
    assert (
        resolve_checkpoint("clip", "custom_clip.pt") == (isolated_dirs / "custom_clip.pt").resolve()
    )
    elsewhere = tmp_path / "elsewhere.pt"
    elsewhere.write_bytes(b"x")
    assert resolve_checkpoint("clip", str(elsewhere)) == elsewhere.resolve()
    with pytest.raises(FileNotFoundError, match="custom_missing.pt"):
        resolve_checkpoint("clip", "custom_missing.pt")


def test_wrong_file_under_a_known_name_is_rejected_with_the_expected_hash(isolated_dirs):
    (isolated_dirs / "sam_vit_b_01ec64.pth").write_bytes(b"not the real checkpoint")
    with pytest.raises(ValueError) as err:
        resolve_checkpoint("sam", "sam_vit_b_01ec64.pth")
    assert "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912" in str(err.value)
    assert hashlib.sha256(b"not the real checkpoint").hexdigest() in str(err.value)


def test_matching_hash_passes_and_the_identity_carries_it(isolated_dirs, monkeypatch):
    data = b"a checkpoint with a published hash"
    digest = hashlib.sha256(data).hexdigest()
    monkeypatch.setitem(
        weights.KNOWN_CHECKPOINTS,
        "known.pth",
        KnownCheckpoint("sam", "known.pth", "https://x", digest),
    )
    (isolated_dirs / "known.pth").write_bytes(data)
    assert resolve_checkpoint("sam", "known.pth").name == "known.pth"
    assert weights_identity("sam", "known.pth") == f"known.pth:sha256:{digest[:16]}"


def test_kind_mismatch_and_random_init_are_explicit():
    with pytest.raises(ValueError, match="SAM checkpoint"):
        resolve_checkpoint("clip", "sam_vit_h_4b8939.pth")
    with pytest.raises(ValueError, match="random init"):
        resolve_checkpoint("sam", None)
    assert weights_identity("clip", None) == "random-init"


def test_file_hash_is_remembered_until_the_file_changes(isolated_dirs, monkeypatch):
    path = isolated_dirs / "blob.bin"
    path.write_bytes(b"one")
    assert weights.file_sha256(path) == hashlib.sha256(b"one").hexdigest()
    assert weights._hash_memo_file().is_file()
    path.write_bytes(b"two!")  # new size -> new memo key
    assert weights.file_sha256(path) == hashlib.sha256(b"two!").hexdigest()


def test_official_sam_table_is_complete():
    for model_type, name in weights.SAM_CHECKPOINTS.items():
        known = weights.KNOWN_CHECKPOINTS[name]
        assert known.kind == "sam" and model_type in name
        assert known.url.endswith(name) and len(known.sha256) == 64
