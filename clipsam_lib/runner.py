"""`clipsam run`: execute the numbered notebooks in order through papermill.

Each notebook gets the profile name as its ``profile`` parameter; its executed copy goes
to ``results/<profile>/notebooks/``. A failing cell stops the run with the notebook, the
cell and the error; the failed copy is kept so the reader can open it. A re-run can start
from any notebook (``--from NN``) or run one (``--only NN``): the notebooks read each
other's results files and the caches, so nothing finished is recomputed.
"""

from __future__ import annotations

import functools
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from clipsam_lib.cleanup import record_complete_run
from clipsam_lib.config import load_profile
from clipsam_lib.errors import UserError
from clipsam_lib.io_utils import write_json_atomic
from clipsam_lib.paths import project_root, results_subdir
from clipsam_lib.provenance import weights_kind

NOTEBOOK_PATTERN = re.compile(r"^(\d\d)_.*\.ipynb$")


class NotebookFailed(UserError, RuntimeError):
    """A notebook cell raised; the message names the notebook, the cell and the error."""


@dataclass
class NotebookRun:
    name: str
    seconds: float
    output: Path


def numbered_notebooks(notebooks_dir: Path) -> list[Path]:
    """``NN_*.ipynb`` in ``notebooks_dir``, in order."""
    if not notebooks_dir.is_dir():
        raise UserError(
            f"Notebook folder {notebooks_dir} does not exist; run from the project checkout "
            "or set CLIPSAM_ROOT to it."
        )
    return sorted(p for p in notebooks_dir.iterdir() if NOTEBOOK_PATTERN.match(p.name))


def select_notebooks(
    notebooks: list[Path], start: str | None = None, only: str | None = None
) -> list[Path]:
    """Filter by two-digit number: ``only`` one notebook, or everything from ``start`` on."""
    numbers = [NOTEBOOK_PATTERN.match(p.name).group(1) for p in notebooks]
    for flag, value in (("--from", start), ("--only", only)):
        if value is not None and value.zfill(2) not in numbers:
            raise UserError(
                f"{flag} {value}: no notebook with that number; available: {', '.join(numbers)}."
            )
    if only is not None:
        return [p for p, n in zip(notebooks, numbers) if n == only.zfill(2)]
    if start is not None:
        return [p for p, n in zip(notebooks, numbers) if n >= start.zfill(2)]
    return notebooks


def _describe_failure(err: Exception, notebook: Path, output: Path) -> str:
    cell = getattr(err, "exec_count", None)
    ename = getattr(err, "ename", type(err).__name__)
    evalue = getattr(err, "evalue", str(err))
    where = f"cell {cell}" if cell is not None else "a cell"
    return (
        f"{notebook.name} failed in {where}: {ename}: {evalue} "
        f"(the executed copy with the traceback is {output})."
    )


@functools.cache
def curve_kernel_manager() -> type | None:
    """A kernel manager that encrypts the kernel's sockets (CurveZMQ) where it can.

    ipykernel 7.4 prints "Kernel is running over TCP without encryption" in every run
    unless its manager provisions Curve keys, which jupyter_client's default policy does
    not ('disabled'). None (papermill's default manager) with a jupyter_client that has
    no such policy or a pyzmq built without Curve.
    """
    import zmq
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    if ("transport_encryption" not in AsyncKernelManager.class_trait_names()
            or not zmq.has("curve")):
        return None

    class CurveKernelManager(AsyncKernelManager):
        @default("transport_encryption")
        def _encrypt_where_the_kernel_can(self) -> str:
            return "auto"  # only when the kernelspec says it supports Curve

    return CurveKernelManager


def run_notebook(notebook: Path, output: Path, parameters: dict) -> float:
    """Execute one notebook headless; return its wall time in seconds."""
    import papermill

    manager = curve_kernel_manager()
    started = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(notebook),
            str(output),
            parameters=parameters,
            cwd=str(notebook.parent),
            kernel_name="python3",
            progress_bar=False,
            **({"kernel_manager_class": manager} if manager else {}),
        )
    except papermill.PapermillExecutionError as err:
        raise NotebookFailed(_describe_failure(err, notebook, output)) from err
    return time.perf_counter() - started


def run_notebooks(
    profile: str,
    *,
    start: str | None = None,
    only: str | None = None,
    notebooks_dir: str | Path | None = None,
    deep_check: bool = False,
) -> list[NotebookRun]:
    """Run the selected notebooks for ``profile``; write a run log beside the copies.

    The preflight runs first: a bad setting, a missing checkpoint, a broken dataset or an
    unwritable folder stops the run before any notebook executes, with every problem.
    """
    from clipsam_lib.preflight import preflight

    config = load_profile(profile)  # fail early on an unknown profile or a bad value
    if weights_kind(config) != "pretrained":
        # Nothing to download (random or committed mini weights): stop open_clip from
        # retrying the hub for ~45 s.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    folder = Path(notebooks_dir) if notebooks_dir else project_root() / "notebooks"
    every = numbered_notebooks(folder)
    selected = select_notebooks(every, start=start, only=only)
    started = time.time()  # before any stage stamps the folders it uses (cleanup)
    report = preflight(config, deep=deep_check).raise_for_problems()
    for line in report.cleaned:
        print(f"[clipsam run] removed {line}", flush=True)
    out_dir = results_subdir(config, "notebooks")
    runs: list[NotebookRun] = []
    for notebook in selected:
        output = out_dir / notebook.name
        print(f"[clipsam run] {notebook.name} (profile {config.name}) ...", flush=True)
        seconds = run_notebook(notebook, output, {"profile": profile})
        runs.append(NotebookRun(notebook.name, seconds, output))
        print(f"[clipsam run] {notebook.name} done in {seconds:.1f} s -> {output}", flush=True)
    log = {
        "profile": config.name,
        "config_hash": config.hash(),
        "notebooks": [{"name": r.name, "seconds": round(r.seconds, 1)} for r in runs],
    }
    write_json_atomic(out_dir / "run_log.json", log)
    if selected == every:
        record_complete_run(config, started)
    return runs
