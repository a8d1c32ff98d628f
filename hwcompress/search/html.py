"""report.html: one self-contained page rendered straight from the report dict.

Plots are base64 PNGs and the listening example base64 WAVs (data URIs), so the file
needs no network and no neighbouring files. Every piece of text from the report is
escaped. Opened as `report.html?selftest` the page checks itself in JavaScript (tables
present, every image decoded, every <audio> loaded and its WAV decodable by Web Audio)
and writes the verdict as JSON into `<pre id="selftest-result">`, which a headless
browser's DOM dump can read (tests/test_report_html.py)."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Clip:
    """One recording of the listening example."""

    key: str  # noisy, dense, fitted-<B>ms, clean
    label: str
    wav: bytes  # the WAV file as written next to the report
    file: str  # its path relative to the report folder
    seconds: float
    si_sdr_db: float | None  # vs the clean reference; None for the reference itself


@dataclass
class Example:
    """The same noisy test mixture as heard through the dense and the fitted model(s)."""

    mixture: dict[str, Any]  # id, snr_db, noise_kind, speaker, seconds (from the corpus' mix/test.json)
    clips: list[Clip]
    how: str
    spectrogram_jpeg: str = ""  # base64


@dataclass
class LayerTimes:
    """Per-node latency of one budget's runtime artifact, or why there is none."""

    rows: list[dict] = field(default_factory=list)  # name, type, ms, share
    source: str = ""
    total_ms: float | None = None
    count: int = 0


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    if isinstance(x, int):
        return f"{x:,}".replace(",", "\u2009")
    if isinstance(x, float):
        if x != x:
            return "-"
        return f"{x:.{digits}f}" if abs(x) < 1e4 else f"{x:,.0f}".replace(",", "\u2009")
    return str(x)


def kib(b: int | None) -> str:
    return "-" if b is None else f"{b / 1024:.1f} KiB"


def table(head: list[str], rows: list[list[Any]], *, tid: str = "", caption: str = "",
          right: set[int] | None = None) -> str:
    """A table; cells are escaped unless given as Markup-like ("raw", html) tuples."""
    right = right if right is not None else {i for i in range(len(head)) if i > 0}

    def cell(tag: str, i: int, v: Any) -> str:
        cls = ' class="num"' if i in right else ""
        text = v[1] if isinstance(v, tuple) and v and v[0] == "raw" else esc(v)
        return f"<{tag}{cls}>{text}</{tag}>"

    attr = f' id="{esc(tid)}"' if tid else ""
    out = [f"<table{attr}>"]
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    out.append("<thead><tr>" + "".join(cell("th", i, h) for i, h in enumerate(head)) + "</tr></thead><tbody>")
    for r in rows:
        out.append("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def img(name: str, data: str, alt: str, caption: str, mime: str = "image/png") -> str:
    return (f'<figure id="fig-{esc(name)}"><img alt="{esc(alt)}" src="data:{mime};base64,{data}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


DNSMOS_COLUMNS = (("dnsmos_ovrl", "DNSMOS OVRL"), ("dnsmos_sig", "DNSMOS SIG"), ("dnsmos_bak", "DNSMOS BAK"),
                  ("dnsmos_p808", "DNSMOS P.808"))


def dnsmos_note(report: dict) -> str | None:
    """The DNSMOS provenance line of the quality rows, or None where the fit scored none."""
    for r in report["results"]:
        q = r["quality"]
        if q.get("dnsmos") and "dnsmos_ovrl" in q["compressed"]:
            return q["dnsmos"]
    return None


def _mos_cells(q: dict, shown: bool) -> list[str]:
    return [num(q.get(k), 2) for k, _ in DNSMOS_COLUMNS] if shown else []


def _mos_caption(note: str | None) -> str:
    return (f" DNSMOS: {note}; non-intrusive (no clean reference), 1-5, higher is better; models by Microsoft "
            "(MIT licence)." if note else "")


def _summary(report: dict) -> str:
    note = dnsmos_note(report)
    rows = []
    for r in report["results"]:
        q = r["quality"]["compressed"]
        met = ("raw", '<span class="ok">yes</span>' if r["budget_met"] else '<span class="bad">NO</span>')
        rows.append([f"{r['budget_ms']:g} ms", num(r["latency_ms"]), r["latency_source"], met,
                     kib(r["runtime_artifact_bytes"]), kib(r["size_bytes"]), num(r.get("peak_memory_bytes")),
                     num(q["pesq_wb"]), num(q["stoi"]), num(q["si_sdr"], 2), *_mos_cells(q, bool(note))])
    r0 = report["results"][0]
    mos_head = [label for _, label in DNSMOS_COLUMNS] if note else []
    return table(["budget", "latency ms/hop", "latency source", "budget met", "runtime artifact", ".hwc",
                  "peak memory B", "PESQ-WB", "STOI", "SI-SDR dB", *mos_head], rows, tid="summary",
                 caption=f"One row per latency budget. Latency: median per 10 ms hop of the exported "
                         f"{r0['runtime']} artifact ({r0['latency_source']}). Quality: mean over "
                         f"{r0['quality']['n']} mixtures of the real-speech test split, torch model."
                         + _mos_caption(note),
                 right={1, 4, 5, 6, 7, 8, 9, *range(10, 10 + len(mos_head))})


def _references(report: dict) -> str:
    """Noisy input, dense model (fp32 torch) and the dense int8 runtime artifact."""
    r0 = report["results"][0]
    q = r0["quality"]
    cal = report["calibration"]
    base = cal["log"][0] if cal.get("log") else {}
    weights = report["settings"].get("weights", "int8")
    if base.get("measured_ms") is not None:
        base_ms, base_src = num(base["measured_ms"]), "measured here (median, fresh process)"
    elif base.get("predicted_ms") is not None:
        base_ms, base_src = num(base["predicted_ms"]), "predicted (latency model, uncalibrated)"
    else:
        base_ms, base_src = "-", "not recorded"
    note = dnsmos_note(report)
    shown = bool(note)
    rows = [
        ["noisy input", "-", "-", "-", num(q["noisy"]["pesq_wb"]), num(q["noisy"]["stoi"]), num(q["noisy"]["si_sdr"], 2),
         *_mos_cells(q["noisy"], shown)],
        ["dense model, fp32 weights", "-", "not timed", kib(r0["dense_fp32_bytes"]),
         num(q["baseline"]["pesq_wb"]), num(q["baseline"]["stoi"]), num(q["baseline"]["si_sdr"], 2),
         *_mos_cells(q["baseline"], shown)],
        [f"dense model, {weights} runtime artifact", base_ms, base_src, kib(base.get("bytes")),
         "as fp32 (not scored)", "", "", *([""] * len(DNSMOS_COLUMNS) if shown else [])],
    ]
    mos_head = [label for _, label in DNSMOS_COLUMNS] if shown else []
    return table(["reference", "latency ms/hop", "how", "weights size", "PESQ-WB", "STOI", "SI-SDR dB", *mos_head], rows,
                 tid="references", caption="What the fitted models are compared with (same test mixtures; the int8 "
                                           "baseline is the calibration stage's export of the dense model)."
                                           + _mos_caption(note),
                 right={1, 3, 4, 5, 6, *range(7, 7 + len(mos_head))})


def _budget(r: dict, images: dict[str, str], times: LayerTimes | None, width: dict[str, tuple] | None,
            roofline: dict[str, float] | None) -> str:
    b = f"{r['budget_ms']:g}"
    out = [f'<section class="budget" id="budget-{esc(b)}ms"><h2>Budget {esc(b)} ms per hop</h2><ul>']
    pv = r["parity_vs_torch"]
    items = [
        f"latency <b>{num(r['latency_ms'])} ms per hop, {esc(r['latency_source'])}</b> ({esc(r['latency_how'])})",
        f"roofline prediction for this model: {num(r['predicted_ms'])} ms (uncalibrated)",
        f"runtime: {esc(r['runtime'])} {esc(r.get('runtime_version') or '')}, {esc(r['threads'])} thread(s), "
        f"device: {esc(r['device'])}",
        f"runtime artifact {kib(r['runtime_artifact_bytes'])} ({esc(', '.join(Path(f).name for f in r['files']['runtime']))}); "
        f"parity vs torch: max |diff| {pv['max_abs_diff']:.2e}, SNR {pv['snr_db']:.1f} dB",
        f".hwc {kib(r['size_bytes'])}, {r['dense_fp32_bytes'] / r['size_bytes']:.1f}x smaller than the fp32 weights",
        f"peak memory {num(r['peak_memory_bytes'])} B, {esc(r['peak_memory_source'])} ({esc(r['peak_memory_method'])})",
        f"MACs per frame {num(r['macs_per_frame']['before'])} &rarr; {num(r['macs_per_frame']['after'])}",
    ]
    emu = r.get("emulated_check")
    if emu:
        items.append("emulated functional check: " + (
            f"{esc(emu['hops'])} hops under {esc(emu.get('emulator'))}, max |diff| vs this host "
            f"{emu['max_abs_diff_vs_host']:.2e}; emulator time {num(emu['emulated_median_ms'], 2)} ms/hop is "
            f"<b>not</b> device latency" if emu.get("ran") else f"not run ({esc(emu.get('reason'))})"))
    out += [f"<li>{x}</li>" for x in items] + ["</ul>"]
    width = width or {}
    roofline = roofline or {}
    rows = []
    for layer in r["layers"]:
        w = width.get(layer["name"])
        rows.append([layer["name"], layer["kind"], num(layer["params_before"]), num(layer["params"]),
                     f"{w[0]} \u2192 {w[1]}" if w else "-", num(layer["structured_sparsity"]),
                     layer["k"] or "-", num(layer["macs_per_frame"]), num(layer["hwc_bytes"]),
                     num(roofline.get(layer["name"]), 4)])
    out.append(table(["layer", "kind", "params before", "params", "width (units)", "structured sparsity", "K",
                      "MACs/frame", ".hwc B", "predicted ms"], rows, tid=f"layers-{b}ms",
                     caption="Per layer: width = output channels / features the runtime executes (dense \u2192 "
                             "fitted); K = codebook size in the .hwc file (the runtime artifact holds int8); "
                             "predicted ms = roofline per layer on the target, not measured",
                     right={2, 3, 4, 5, 6, 7, 8, 9}))
    if f"layers-{b}" in images:
        out.append(img(f"layers-{b}", images[f"layers-{b}"], f"per-layer settings, budget {b} ms",
                       "Structured sparsity (bars), codebook size K (dots) and runtime width kept (fraction of "
                       "the dense layer's units) per layer."))
    if times is not None and times.rows:
        if f"times-{b}" in images:
            out.append(img(f"times-{b}", images[f"times-{b}"], f"per-node latency, budget {b} ms",
                           f"Measured per-node time of the runtime artifact: {times.source}."))
        out.append(table(["node", "op", "ms/hop", "share"],
                         [[t["name"], t["type"], num(t["ms"], 4), f"{100 * t['share']:.1f}%"] for t in times.rows],
                         tid=f"times-{b}ms", right={2, 3},
                         caption=f"Top {len(times.rows)} of {times.count} runtime nodes, measured: {times.source}; "
                                 f"sum of all node medians {num(times.total_ms, 4)} ms with the profiler on (its "
                                 f"per-node bookkeeping is included here; the hop latency above is timed without it)"))
    elif times is not None:
        out.append(f'<p class="note">Per-layer latency: not measured ({esc(times.source)}).</p>')
    out.append("</section>")
    return "\n".join(out)


def _example(ex: Example | None, reason: str) -> str:
    if ex is None:
        return f'<section id="example"><h2>Listening example</h2><p class="note">{esc(reason)}</p></section>'
    m = ex.mixture
    out = ['<section id="example"><h2>Listening example</h2>',
           f"<p>Test mixture {esc(m.get('id'))}: {esc(m.get('speaker'))}, {esc(m.get('noise_kind'))} noise at "
           f"{esc(m.get('snr_db'))} dB SNR, {ex.clips[0].seconds:.1f} s. {esc(ex.how)}</p>", '<div class="clips">']
    for c in ex.clips:
        uri = "data:audio/wav;base64," + base64.b64encode(c.wav).decode()
        score = f"SI-SDR {c.si_sdr_db:.2f} dB" if c.si_sdr_db is not None else "reference"
        out.append(f'<div class="clip"><div class="clip-head"><b>{esc(c.label)}</b><span>{esc(score)}</span></div>'
                   f'<audio id="audio-{esc(c.key)}" controls preload="auto" src="{uri}"></audio>'
                   f'<div class="file">{esc(c.file)}</div></div>')
    out.append("</div>")
    if ex.spectrogram_jpeg:
        out.append(img("spectrograms", ex.spectrogram_jpeg, "spectrograms of the example",
                       "Log-magnitude spectrograms (512-point STFT, 50% overlap, shared dB scale) of the same clip.",
                       mime="image/jpeg"))
    out.append("</section>")
    return "\n".join(out)


CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d2330;
 max-width:1120px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:34px 0 10px;padding-bottom:4px;border-bottom:1px solid #dde2ea}
.sub{color:#566176;margin:0 0 18px}code{background:#f3f5f8;padding:1px 5px;border-radius:4px;font-size:13px;
 word-break:break-all}
table{border-collapse:collapse;margin:10px 0 6px;font-size:13.5px;width:100%}
caption{caption-side:bottom;text-align:left;color:#667085;font-size:12.5px;padding-top:5px}
th,td{padding:5px 9px;border-bottom:1px solid #e6e9ef;text-align:left;vertical-align:top}
th{background:#f3f5f8;font-weight:600;border-bottom:2px solid #d5dae3;white-space:nowrap}
tbody tr:nth-child(even){background:#fafbfc}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;
 white-space:nowrap}
.ok{color:#137333;font-weight:600}.bad{color:#b3261e;font-weight:700}
figure{margin:16px 0}figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{color:#667085;font-size:12.5px;margin-top:4px;text-align:center}
ul{padding-left:20px}li{margin:2px 0}.note{color:#667085}
.clips{display:grid;grid-template-columns:repeat(auto-fit,minmax(195px,1fr));gap:12px;margin:12px 0}
.clip{border:1px solid #e0e4eb;border-radius:8px;padding:10px 12px;background:#fafbfc}
.clip-head{margin-bottom:6px}.clip-head b{display:block}.clip-head span{color:#566176;font-size:13px}.clip audio{width:100%}.file{color:#8a93a5;font-size:12px;margin-top:3px}
footer{margin-top:40px;color:#8a93a5;font-size:12.5px}
#selftest-result{white-space:pre-wrap;font-size:12px;background:#f3f5f8;padding:8px}
"""

# Runs only under ?selftest: a browser-side check that the page really works (every
# table has rows, every image and audio element decodes, every WAV data URI decodes in
# Web Audio); the verdict goes into the DOM for a headless DOM dump to read.
SELFTEST_JS = r"""
(function () {
  if (!/[?&]selftest\b/.test(location.search)) return;
  function withTimeout(p, ms, what) {
    return Promise.race([p, new Promise(function (res) {
      setTimeout(function () { res({id: what, ok: false, error: "timed out after " + ms + " ms"}); }, ms); })]);
  }
  function mediaLoaded(a) {
    return new Promise(function (res) {
      function done(ok, why) {
        res({id: a.id, ok: ok && a.readyState >= 2, readyState: a.readyState, duration: a.duration,
             error: why || (a.error ? "MediaError " + a.error.code : null)});
      }
      if (a.error) return done(false);
      if (a.readyState >= 2) return done(true);
      a.addEventListener("loadeddata", function () { done(true); }, {once: true});
      a.addEventListener("canplay", function () { done(true); }, {once: true});
      a.addEventListener("error", function () { done(false); }, {once: true});
      if (a.networkState === HTMLMediaElement.NETWORK_EMPTY) a.load();
    });
  }
  function decoded(a, ctx) {
    var src = a.getAttribute("src") || "";
    var comma = src.indexOf(",");
    try {
      var bin = atob(src.slice(comma + 1));
      var bytes = new Uint8Array(bin.length);
      for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    } catch (e) {
      return Promise.resolve({id: a.id, ok: false, error: "base64: " + e});
    }
    return ctx.decodeAudioData(bytes.buffer).then(function (buf) {
      var x = buf.getChannelData(0), peak = 0;
      for (var j = 0; j < x.length; j++) peak = Math.max(peak, Math.abs(x[j]));
      return {id: a.id, ok: buf.length > 0 && peak > 0, seconds: buf.duration, sampleRate: buf.sampleRate,
              channels: buf.numberOfChannels, peak: peak};
    }, function (e) { return {id: a.id, ok: false, error: "decodeAudioData: " + e}; });
  }
  async function run() {
    var r = {tables: [], images: [], media: [], decode: []};
    document.querySelectorAll("table").forEach(function (t) {
      r.tables.push({id: t.id, rows: t.tBodies.length ? t.tBodies[0].rows.length : 0,
                     cols: t.tHead ? t.tHead.rows[0].cells.length : 0});
    });
    document.querySelectorAll("img").forEach(function (im) {
      r.images.push({alt: im.alt, ok: im.complete && im.naturalWidth > 0, width: im.naturalWidth,
                     height: im.naturalHeight});
    });
    var audios = Array.prototype.slice.call(document.querySelectorAll("audio"));
    r.media = await Promise.all(audios.map(function (a) { return withTimeout(mediaLoaded(a), 12000, a.id); }));
    var ctx = new OfflineAudioContext(1, 16000, 16000);
    r.decode = await Promise.all(audios.map(function (a) { return withTimeout(decoded(a, ctx), 12000, a.id); }));
    var want = JSON.parse(document.body.getAttribute("data-expect") || "{}");
    function all(xs) { return xs.every(function (x) { return x.ok; }); }
    r.expected = want;
    r.pass = r.tables.length >= (want.tables || 1) && r.tables.every(function (t) { return t.rows > 0; })
      && r.images.length >= (want.images || 0) && all(r.images)
      && audios.length === (want.audio || 0) && all(r.media) && all(r.decode);
    var box = document.createElement("pre");
    box.id = "selftest-result";
    box.textContent = JSON.stringify(r);
    document.body.appendChild(box);
    document.title = r.pass ? "selftest: pass" : "selftest: FAIL";
  }
  window.addEventListener("load", function () {
    run().catch(function (e) {
      var box = document.createElement("pre");
      box.id = "selftest-result";
      box.textContent = JSON.stringify({pass: false, error: String(e)});
      document.body.appendChild(box);
    });
  });
})();
"""


def render(report: dict, images: dict[str, str], example: Example | None, example_reason: str,
           layer_times: dict[float, LayerTimes], widths: dict[float, dict[str, tuple]],
           roofline: dict[float, dict[str, float]]) -> str:
    """The whole page. `images`: name -> base64 PNG; the per-budget ones are keyed
    `layers-<B>` and `times-<B>` (B = budget in ms, %g)."""
    r0 = report["results"][0]
    cmd = report.get("command") or "hwcompress fit (library call)"
    body = [f"<h1>hwcompress fit: {esc(report['model'])} on {esc(report['target'])}</h1>",
            f'<p class="sub">{esc(report["target_description"])}. Runtime {esc(r0["runtime"])} '
            f'{esc(r0.get("runtime_version") or "")}, {esc(r0["threads"])} thread(s), device: {esc(r0["device"])}.'
            f"<br>Command: <code>{esc(cmd)}</code></p>",
            "<h2>Summary</h2>", _summary(report), _references(report)]
    if "tradeoff" in images:
        body.append(img("tradeoff", images["tradeoff"], "quality vs latency and size",
                        "Left: PESQ-WB vs latency per hop (marker area = runtime artifact bytes; dotted lines: "
                        "budgets). Right: PESQ-WB vs bytes (log scale). The int8 baseline is plotted at the dense "
                        "model's fp32 quality: its own quality is not scored."))
    body.append(_example(example, example_reason))
    for r in report["results"]:
        b = r["budget_ms"]
        body.append(_budget(r, images, layer_times.get(b), widths.get(b), roofline.get(b)))
    cal = report["calibration"]
    body.append(f"<footer>Run time {report['seconds'] / 60:.1f} min. Latency model calibration factor "
                f"{cal['factor']:.3f} (measured / predicted; 1.0 when the target cannot be measured here). "
                f"Machine-readable: report.json (schema {esc(report['schema'])}).</footer>")
    text = "\n".join(body)
    n_tables, n_images = text.count("<table"), text.count("<img ")
    n_audio = len(example.clips) if example else 0
    expect = esc(json.dumps({"tables": n_tables, "images": n_images, "audio": n_audio}))
    return ("<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>hwcompress fit: {esc(report['model'])} on {esc(report['target'])}</title>"
            f"<style>{CSS}</style></head>\n<body data-expect=\"{expect}\">\n" + text
            + f"\n<script>{SELFTEST_JS}</script>\n</body></html>\n")
