"""Progress bars on stderr, so stdout stays clean for tables and --json output."""

from __future__ import annotations

from rich.console import Console
from rich.progress import Progress


def progress_bar(*columns, **kwargs) -> Progress:
    return Progress(*columns, console=Console(stderr=True), **kwargs)
