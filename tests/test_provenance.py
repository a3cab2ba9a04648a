"""git_commit: a run's own results do not make the checkout 'dirty'; code changes do."""

import subprocess

from clipsam_lib.provenance import git_commit


def _git(root, *args):
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def test_results_changes_are_not_dirty_but_code_changes_are(tmp_path, monkeypatch):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "t.csv").write_text("a\n1\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setenv("CLIPSAM_ROOT", str(tmp_path))
    git_commit.cache_clear()  # cached per process: one answer per notebook kernel
    clean = git_commit()
    assert len(clean) == 10 and "+" not in clean
    (tmp_path / "results" / "t.csv").write_text("a\n2\n")  # a re-run rewrote a table
    git_commit.cache_clear()
    assert git_commit() == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    git_commit.cache_clear()
    assert git_commit() == clean + "+dirty"
    git_commit.cache_clear()  # later tests see this checkout again
