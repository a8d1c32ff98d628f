"""Shared fixtures: a small corpus built once per session with the real builder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("HWC_TEST_CACHE", Path.home() / ".cache" / "hwcompress-tests"))


@pytest.fixture(scope="session")
def small_corpus() -> Path:
    """A few real prompts per speaker, one sentence per synthetic voice, all noise kinds."""
    from hwcompress.data.corpus import build_corpus

    out = CACHE / "small-corpus-v1"
    if not (out / "manifest.json").exists():
        build_corpus(out, seed=0, per_voice=1, n_valid=6, n_test=10, n_test_synth=5, real_limit=12)
    return out
