"""Pick a demo recording from a built corpus, deterministically: the first mixture of an
evaluation set (in id order, as listed in mix/<set>.json) whose speech lasts at least
`min_seconds`. The main job enhances it (tools/run.sh via `hwcompress data example`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hwcompress.errors import HwcError

#: shortest demo recording: long enough to hear the enhancement over several words
DEFAULT_MIN_SECONDS = 4.0


@dataclass(frozen=True)
class Example:
    """One evaluation mixture: its id, files and what mix/<set>.json says about it."""

    set_name: str
    id: str
    noisy: Path
    clean: Path
    seconds: float
    snr_db: float
    noise_kind: str
    speaker: str


def first_long_mixture(root: Path, set_name: str = "test", min_seconds: float = DEFAULT_MIN_SECONDS) -> Example:
    """The first mixture of `set_name` at least `min_seconds` long; HwcError if none is."""
    root = Path(root)
    if not (root / "manifest.json").is_file():
        raise HwcError(f"{root}: not a corpus (no manifest.json); build one with `hwcompress data build --out {root}`")
    if not min_seconds >= 0:  # also rejects NaN
        raise HwcError(f"--min-seconds must be >= 0, got {min_seconds}")
    meta_file = root / "mix" / f"{set_name}.json"
    if not meta_file.is_file():
        known = sorted(p.stem for p in (root / "mix").glob("*.json"))
        raise HwcError(f"{root}: no evaluation set {set_name!r} (have {', '.join(known) or 'none'})")
    try:
        rows = json.loads(meta_file.read_text())
        rows = sorted(rows, key=lambda r: r["id"])
        longest = max((float(r["seconds"]) for r in rows), default=0.0)
        row = next((r for r in rows if float(r["seconds"]) >= min_seconds), None)
        if row is not None:
            noisy = root / "mix" / set_name / f"{row['id']}_noisy.wav"
            found = Example(set_name=set_name, id=str(row["id"]), noisy=noisy,
                            clean=noisy.with_name(f"{row['id']}_clean.wav"), seconds=float(row["seconds"]),
                            snr_db=float(row["snr_db"]), noise_kind=str(row["noise_kind"]), speaker=str(row["speaker"]))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise HwcError(f"{meta_file}: unreadable mixture list ({exc.__class__.__name__}: {exc})") from None
    if row is not None:
        if not found.noisy.is_file():
            raise HwcError(f"{found.noisy}: listed in {meta_file.name} but missing; rebuild with `hwcompress data build --force`")
        return found
    raise HwcError(f"no {set_name!r} mixture lasts {min_seconds:g} s or more (longest: {longest:g} s of {len(rows)})")
