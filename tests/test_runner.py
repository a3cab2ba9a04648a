"""clipsam run: order, --from/--only, a failing cell names notebook + cell + error."""

import json
import time

import nbformat
import pytest

from clipsam_lib import cli
from clipsam_lib.errors import UserError
from clipsam_lib.runner import NotebookFailed, numbered_notebooks, run_notebooks, select_notebooks


def _notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "x"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def notebooks(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPSAM_RESULTS_DIR", str(tmp_path / "results"))
    folder = tmp_path / "notebooks"
    folder.mkdir()
    marker = tmp_path / "trace.txt"
    for name in ("00_a", "01_b", "02_c"):
        _notebook(folder / f"{name}.ipynb",
                  f"open({str(marker)!r}, 'a').write({name!r} + ':' + profile + '\\n')")
    (folder / "helper.ipynb").write_text("{}")  # not numbered: never run
    # Which runs are recorded as complete (cleanup), kept out of the project's cache.
    monkeypatch.setattr("clipsam_lib.runner.record_complete_run",
                        lambda config, started: completed.append((config.name, started)))
    completed.clear()
    return folder, marker, tmp_path / "results" / "smoke" / "notebooks"


completed: list = []


def test_runs_numbered_notebooks_in_order_with_the_profile(notebooks):
    folder, marker, out = notebooks
    runs = run_notebooks("smoke", notebooks_dir=folder)
    assert [r.name for r in runs] == ["00_a.ipynb", "01_b.ipynb", "02_c.ipynb"]
    assert marker.read_text().split() == ["00_a:smoke", "01_b:smoke", "02_c:smoke"]
    assert (out / "01_b.ipynb").is_file()
    log = json.loads((out / "run_log.json").read_text())
    assert [n["name"] for n in log["notebooks"]] == [r.name for r in runs]


def test_a_run_prints_no_kernel_transport_warning(notebooks, capfd):
    # ipykernel 7.4 warns on every kernel start unless the manager provisions CurveZMQ keys
    # (runner.curve_kernel_manager); in a run of six notebooks that is six such lines.
    folder, marker, _ = notebooks
    run_notebooks("smoke", notebooks_dir=folder, only="01")
    assert marker.read_text().split() == ["01_b:smoke"]
    printed = capfd.readouterr()
    assert "without encryption" not in printed.out + printed.err


def test_from_and_only_select_notebooks(notebooks):
    folder, marker, _ = notebooks
    before = time.time()
    run_notebooks("smoke", notebooks_dir=folder)
    assert [name for name, _ in completed] == ["smoke"] and completed[0][1] >= before
    marker.unlink()
    run_notebooks("smoke", notebooks_dir=folder, start="1")
    assert marker.read_text().split() == ["01_b:smoke", "02_c:smoke"]
    marker.unlink()
    run_notebooks("smoke", notebooks_dir=folder, only="00")
    assert marker.read_text().split() == ["00_a:smoke"]
    assert len(completed) == 1, "a partial run is not a complete one"
    with pytest.raises(UserError, match="--only 7: no notebook"):
        select_notebooks(numbered_notebooks(folder), only="7")


def test_failing_cell_stops_the_run_and_keeps_the_failed_copy(notebooks):
    folder, marker, out = notebooks
    _notebook(folder / "01_b.ipynb", "x = 1", "raise ValueError('bad layout in /data/x')")
    with pytest.raises(NotebookFailed) as err:
        run_notebooks("smoke", notebooks_dir=folder)
    message = str(err.value)
    assert "01_b.ipynb failed in cell" in message and "bad layout in /data/x" in message
    assert (out / "01_b.ipynb").is_file()
    assert marker.read_text().split() == ["00_a:smoke"], "02 must not run after 01 failed"
    assert completed == [], "a failed run is not a complete one"


def test_cli_reports_failure_in_one_line(notebooks, capsys, monkeypatch):
    folder, _, _ = notebooks
    _notebook(folder / "00_a.ipynb", "1/0")
    monkeypatch.setattr("clipsam_lib.runner.project_root", lambda: folder.parent)
    assert cli.main(["run", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "ZeroDivisionError" in err and "00_a.ipynb" in err


def _parameter_names(cell_source: str) -> set[str]:
    import ast

    return {target.id for node in ast.parse(cell_source).body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name)}


def test_papermill_reads_every_parameter_of_every_project_notebook():
    # papermill reads a notebook's parameters cell line by line before it runs it; a line
    # it cannot read (two "=" on it, one in the comment) prints "Unable to parse line" in
    # every run and drops that parameter from ``papermill --help-notebook``.
    import papermill

    from clipsam_lib.paths import project_root

    for notebook in numbered_notebooks(project_root() / "notebooks"):
        cell = next(c for c in nbformat.read(notebook, as_version=4).cells
                    if "parameters" in c.metadata.get("tags", []))
        read = set(papermill.inspect_notebook(str(notebook)))
        assert read == _parameter_names(cell.source), (
            f"{notebook.name}: papermill cannot read the parameters "
            f"{sorted(_parameter_names(cell.source) - read)}: keep '=' out of their comments")
