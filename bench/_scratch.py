"""A scratch results folder for a benchmark, removed when it ends.

Benchmarks train runs and write maps that nobody reads afterwards (hundreds of MB each);
left in /tmp, a few sessions of them filled a CI disk (2026-12-05). A results folder the
caller chose (``CLIPSAM_RESULTS_DIR`` already set) is kept.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def scratch_results(prefix: str) -> Iterator[str]:
    """``CLIPSAM_RESULTS_DIR``: the caller's, or a temporary folder removed on exit."""
    if os.environ.get("CLIPSAM_RESULTS_DIR"):
        yield os.environ["CLIPSAM_RESULTS_DIR"]
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        os.environ["CLIPSAM_RESULTS_DIR"] = folder
        try:
            yield folder
        finally:
            del os.environ["CLIPSAM_RESULTS_DIR"]
