"""`hwcompress data example`: the main job's demo recording, the first test mixture of >= 4 s."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from hwcompress.data.example import first_long_mixture
from hwcompress.errors import HwcError
from conftest import user_error  # exit 2 and one error line


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hwcompress", *args], capture_output=True, text=True, timeout=120)



def test_first_mixture_of_at_least_min_seconds(small_corpus: Path) -> None:
    rows = sorted(json.loads((small_corpus / "mix" / "test.json").read_text()), key=lambda r: r["id"])
    ex = first_long_mixture(small_corpus, "test", 4.0)
    assert ex.seconds >= 4.0 and ex.noisy.is_file() and ex.clean.is_file()
    earlier = [r for r in rows if r["id"] < ex.id]
    assert all(r["seconds"] < 4.0 for r in earlier)
    # the listed length is the file's: the demo really lasts that long
    info = sf.info(ex.noisy)
    assert info.frames / info.samplerate == pytest.approx(ex.seconds, abs=1e-3)
    # a threshold at or below the first mixture's length picks the first one
    assert first_long_mixture(small_corpus, "test", 0).id == rows[0]["id"]
    assert first_long_mixture(small_corpus, "test", ex.seconds).id == ex.id


def test_cli_prints_the_path_and_json(small_corpus: Path) -> None:
    want = first_long_mixture(small_corpus)
    proc = run("data", "example", "--data", str(small_corpus))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(want.noisy)
    proc = run("data", "example", "--data", str(small_corpus), "--min-seconds", "2.5", "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["seconds"] >= 2.5 and Path(got["noisy"]).is_file() and got["set"] == "test"
    assert "mix/test.json" in got["seconds_source"]


def test_bad_input_is_one_line(small_corpus: Path, tmp_path: Path) -> None:
    user_error(run("data", "example", "--data", str(small_corpus), "--min-seconds", "1000"),
                      "no 'test' mixture lasts 1000 s or more (longest:")
    user_error(run("data", "example", "--data", str(small_corpus), "--set", "nope"), "no evaluation set 'nope'")
    user_error(run("data", "example", "--data", str(small_corpus), "--min-seconds", "-1"), "--min-seconds")
    user_error(run("data", "example", "--data", str(tmp_path)), "not a corpus")


def test_listed_but_missing_file_is_reported(small_corpus: Path, tmp_path: Path) -> None:
    copy = tmp_path / "corpus"
    (copy / "mix" / "test").mkdir(parents=True)
    shutil.copy(small_corpus / "manifest.json", copy / "manifest.json")
    shutil.copy(small_corpus / "mix" / "test.json", copy / "mix" / "test.json")
    with pytest.raises(HwcError, match="listed in test.json but missing"):
        first_long_mixture(copy)
    (copy / "mix" / "test.json").write_text("{not json")
    with pytest.raises(HwcError, match="unreadable mixture list"):
        first_long_mixture(copy)
