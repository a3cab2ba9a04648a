"""Error types for what a user can cause and fix (paths, layouts, files, settings).

Each message is one sentence naming the file, the key or the folder, and the fix. The
command line prints these as one line; any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the message names the file (or key) and the fix."""


class PreflightFailed(UserError):
    """The preflight found problems before any work started; one line each."""


class DiskError(UserError, OSError):
    """A folder or file could not be written (full disk, read-only folder)."""


class WeightsError(UserError, ValueError):
    """A checkpoint that is the wrong file, corrupt, or does not load."""


class WeightsNotFound(UserError, FileNotFoundError):
    """A checkpoint that is not where the profile says, nor in the weights folders."""


class ProfileNotFound(UserError, FileNotFoundError):
    """A profile name or path that does not exist."""
