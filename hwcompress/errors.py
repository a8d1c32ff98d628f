"""Project-wide error types.

The CLI turns any HwcError into one `error: ...` line and exit code 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class HwcError(Exception):
    """A user mistake: reported as one line, exit code 2."""
