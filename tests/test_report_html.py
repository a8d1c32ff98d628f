"""report.html of a real (tiny) fit, opened in a real headless browser (Debian's chromium):
it loads, shows its tables and plots, and every <audio> element loads and its WAV data
URI decodes in Web Audio. The page's own `?selftest` script does the browser-side checks
and writes its verdict into the DOM, which `--dump-dom` hands back here.

Skips only where chromium is missing and CI is not set; with CI=true a missing chromium
fails (tools/setup.sh installs it)."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import soundfile as sf

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--mute-audio", "--hide-scrollbars"]

pytestmark = pytest.mark.slow  # a tiny fit (~30 s on a loaded 2-core host) feeds every test here


def need_chromium() -> str:
    if CHROMIUM:
        return CHROMIUM
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is not installed, and CI=true: the report must be checked in a browser "
                    "(tools/setup.sh installs Debian's chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium); with CI=true this fails instead")


def chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    exe = need_chromium()
    with tempfile.TemporaryDirectory(prefix="hwc-chromium-") as profile:
        return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)


def selftest(page: Path) -> dict:
    """Load `page?selftest` and return the page's own verdict (see search/html.py)."""
    proc = chromium("--virtual-time-budget=15000", "--dump-dom", page.as_uri() + "?selftest")
    m = re.search(r'<pre id="selftest-result"[^>]*>(.*?)</pre>', proc.stdout, re.S)
    assert m, f"no self-test result in the DOM (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(html.unescape(m.group(1)))


def _fit(out: Path, data: Path) -> dict:
    """The smallest real fit: one budget, one validation mixture, one test mixture scored,
    one fine-tuning step; what it writes is the real report (write_reports at its end)."""
    from hwcompress.search.fit import FitConfig, fit

    cfg = FitConfig(target="generic-onnx", out=out, budgets_ms=[5.0], model="tiny-gru", data=data, prune_steps=1,
                    cluster_steps=1, batch=2, seconds=1.0, sensitivity_items=1, eval_items=1, measure_runs=20,
                    final_runs=20)
    return fit(cfg, log=lambda m: None)


@pytest.fixture(scope="module")
def browser() -> str:
    """Named before `fitted` by the browser tests: a missing chromium skips (or, in CI, fails) before the fit."""
    return need_chromium()


@pytest.fixture(scope="module")
def fitted(small_corpus, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("fit-html")
    return out, _fit(out, small_corpus)


def _audio_uris(page: str) -> dict[str, str]:
    return dict(re.findall(r'<audio id="audio-([^"]+)"[^>]* src="(data:audio/wav;base64,[^"]+)"', page))


def test_report_html_loads_shows_tables_and_plays_audio_in_chromium(browser, fitted, tmp_path) -> None:
    out, report = fitted
    page = out / "report.html"
    budgets = [r["budget_ms"] for r in report["results"]]
    r = selftest(page)
    assert r["pass"] is True, json.dumps(r, indent=1)[:4000]
    tables = {t["id"]: t for t in r["tables"]}
    assert tables["summary"]["rows"] == len(budgets)
    assert tables["references"]["rows"] == 3
    for b in budgets:
        assert tables[f"layers-{b:g}ms"]["rows"] == len(report["results"][0]["layers"])
        assert tables[f"times-{b:g}ms"]["rows"] > 0  # measured here: onnxruntime's profiler
    alts = {i["alt"] for i in r["images"]}
    assert {"quality vs latency and size", "spectrograms of the example"} <= alts
    assert all(i["width"] > 300 for i in r["images"])
    # noisy, dense, one fitted clip per budget, clean reference: each loads and decodes
    keys = ["noisy", "dense", *[f"fitted-{b:g}ms" for b in budgets], "clean"]
    assert [m["id"] for m in r["media"]] == [f"audio-{k}" for k in keys]
    assert all(m["readyState"] >= 2 for m in r["media"])
    for d, key in zip(r["decode"], keys):
        seconds = sf.info(str(out / "example" / f"{key}.wav")).duration
        assert d["ok"] and d["channels"] == 1 and d["peak"] > 1e-3, d
        assert abs(d["seconds"] - seconds) < 0.01, (d, seconds)
        assert 4.0 <= seconds <= 6.0

    shot = tmp_path / "report.png"  # not committed: looked at by hand while developing
    proc = chromium("--window-size=1200,5200", f"--screenshot={shot}", page.as_uri())
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", proc.stderr[-2000:]
    assert shot.stat().st_size > 50_000  # a rendered page, not a blank one
    if os.environ.get("HWC_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["HWC_KEEP_SCREENSHOT"])


def test_selftest_fails_when_a_clip_does_not_decode(browser, fitted, tmp_path) -> None:
    """The browser check can fail: one clip's data URI replaced by a truncated WAV header."""
    out, _ = fitted
    text = (out / "report.html").read_text()
    uri = _audio_uris(text)["dense"]
    broken = tmp_path / "report.html"
    broken.write_text(text.replace(uri, "data:audio/wav;base64,UklGRiQAAABXQVZFZm10IBAAAAA="))
    r = selftest(broken)
    assert r["pass"] is False
    bad = [d["id"] for d in r["decode"] if not d["ok"]] + [m["id"] for m in r["media"] if not m["ok"]]
    assert set(bad) == {"audio-dense"}, r


def test_example_wavs_match_the_embedded_audio(fitted) -> None:
    out, report = fitted
    text = (out / "report.html").read_text()
    uris = _audio_uris(text)
    ex = report["example"]
    assert ex["set"] == "test" and set(ex["files"]) == set(uris)
    for key, rel in ex["files"].items():
        wav = out / rel
        info = sf.info(str(wav))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert base64.b64decode(uris[key].split(",", 1)[1]) == wav.read_bytes()
    assert set(ex["si_sdr_db"]) == set(uris) - {"clean"}
    # the dense model changed the signal (a model that passed audio through would score the same)
    assert ex["si_sdr_db"]["dense"] != ex["si_sdr_db"]["noisy"]
    assert json.loads((out / "report.json").read_text())["example"] == ex
    # self-contained: nothing fetched from anywhere
    assert not re.search(r'(src|href)="(?!data:)', text)
    assert "<pre>" not in text  # tables are rendered, not Markdown source
    for r in report["results"]:
        assert r["layer_latency"]["latency_source"] == "measured" and r["layer_latency"]["nodes"]
        assert all(layer["width"] <= layer["width_before"] for layer in r["layers"])


def test_report_text_is_escaped(fitted) -> None:
    from hwcompress.search.html import render

    out, report = fitted
    report = json.loads(json.dumps(report))
    report["model"] = "<script>alert(1)</script>"
    report["results"][0]["layers"][0]["name"] = "enc&<0>"
    page = render(report, {}, None, "no example <here>", {}, {}, {})
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "enc&amp;&lt;0&gt;" in page and "no example &lt;here&gt;" in page
