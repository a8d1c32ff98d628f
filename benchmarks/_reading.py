"""Committed benchmark tables end with a hand-written "## Reading" section; a rerun that
regenerates the tables above it must keep that section."""

from __future__ import annotations

from pathlib import Path

NOTES = "## Reading (written by hand"


def write_keeping_reading(path: Path, text: str) -> str:
    """Write `text` to `path` (atomically), followed by the reading section the old file had;
    returns what was written."""
    old = path.read_text() if path.is_file() else ""
    if NOTES in old:
        text += "\n" + old[old.index(NOTES):]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return text
