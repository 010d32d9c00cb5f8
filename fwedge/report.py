"""Reports: one self-contained HTML file (inline CSS, JS and SVG) and a Markdown CI summary."""
from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from fwedge.device_farm.gate import GateReport
from fwedge.device_farm.results import DeviceResult, Results, load_results
from fwedge.errors import GateError
from fwedge.profile import load_profiles
from fwedge.report_profile import profile_section
from fwedge.tasks import DETECTION

SQNR_WARN_DB = 20.0

STYLE = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1b1f24;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
.meta{color:#57606a;margin-bottom:12px}.verdict{display:inline-block;padding:4px 12px;border-radius:6px;font-weight:700;color:#fff}
.pass{background:#1a7f37}.fail{background:#cf222e}.none{background:#6e7781}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f6f8fa;cursor:pointer;user-select:none;white-space:normal;max-width:90px}td.l,th.l{text-align:left}
tr.error td,tr.gate-fail td{background:#ffebe9}tr.gate-fail td:first-child{border-left:4px solid #cf222e}td.name{white-space:normal;overflow-wrap:anywhere;min-width:170px;max-width:230px}
.sub{color:#57606a;font-size:12px;white-space:normal}
tr.v-fail td{background:#ffebe9}tr.v-waived td{background:#fff8c5}.err{white-space:normal;min-width:140px;max-width:300px;text-align:left;color:#cf222e;overflow-wrap:anywhere}
td.wrap{white-space:normal;min-width:260px;max-width:520px;text-align:left}.scroll{overflow-x:auto}
svg text{font:11px system-ui,sans-serif;fill:#1b1f24}.note{color:#57606a}
"""

SCRIPT = """
(function(){
  document.querySelectorAll('table.sortable').forEach(function(table){
    table.querySelectorAll('th').forEach(function(th, column){
      th.addEventListener('click', function(){
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var ascending = th.getAttribute('data-order') !== 'asc';
        rows.sort(function(a, b){
          var x = a.cells[column].getAttribute('data-v') || a.cells[column].textContent;
          var y = b.cells[column].getAttribute('data-v') || b.cells[column].textContent;
          var nx = parseFloat(x), ny = parseFloat(y);
          var cmp = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
          return ascending ? cmp : -cmp;
        });
        rows.forEach(function(row){ body.appendChild(row); });
        th.setAttribute('data-order', ascending ? 'asc' : 'desc');
      });
    });
  });
  document.body.setAttribute('data-ready', 'yes');
})();
"""




def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


# The page may fetch nothing and run only its own script: every network source is forbidden,
# and the one inline script and style element are allowed by their hashes. Text from results,
# analyses and gate verdicts is escaped everywhere; should any markup slip through anyway, an
# injected <script>, event handler or style element still does not run ('unsafe-inline' is
# never given, and hashes do not cover handler attributes).
CSP = (f"default-src 'none'; script-src {_csp_hash(SCRIPT)}; style-src {_csp_hash(STYLE)}; img-src data:; "
       "base-uri 'none'; form-action 'none'")


@dataclass
class ReportFiles:
    """What write_report wrote."""

    html: Path
    markdown: Path | None = None


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.2f}%"


def _num(value, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, str):  # "inf" from strict JSON
        return value
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def _bytes(value) -> str:
    return "" if value is None else f"{int(value):,}"


def load_analysis(path: str | os.PathLike) -> dict:
    """Read `fwedge analyze --json` output.

    Raises:
        GateError: missing file, not JSON, or no "tensors" list.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GateError(f"analysis '{path}': cannot read ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("tensors"), list):
        raise GateError(f"analysis '{path}': expected `fwedge analyze --json` output with a 'tensors' list")
    for index, entry in enumerate(data["tensors"]):
        where = f"analysis '{path}': tensors[{index}]"
        if not isinstance(entry, dict):
            raise GateError(f"{where}: expected a table, got {type(entry).__name__}")
        for key in ("tensor", "op", "node"):
            if key in entry and not isinstance(entry[key], str):
                raise GateError(f"{where}: {key} must be a string, got {type(entry[key]).__name__}")
        order = entry.get("order", 0)
        if isinstance(order, bool) or not isinstance(order, (int, float)) or not math.isfinite(order):
            raise GateError(f"{where}: order must be a number, got {order!r:.80}")
        sqnr = entry.get("sqnr_db")
        if sqnr not in (None, "inf") and (isinstance(sqnr, bool) or not isinstance(sqnr, (int, float))
                                         or not math.isfinite(sqnr)):
            raise GateError(f"{where}: sqnr_db must be a finite number, \"inf\" or null, got {sqnr!r:.80}")
    jump = data.get("first_jump")
    if jump is not None and not isinstance(jump, dict):
        raise GateError(f"analysis '{path}': first_jump must be a table or null, got {type(jump).__name__}")
    return data


def _sqnr_value(entry: dict) -> float:
    value = entry.get("sqnr_db")
    if value in ("inf", None):
        return math.inf
    return float(value)


def short_labels(names: list[str], limit: int = 40) -> list[str]:
    """A short label per tensor name that tells the names apart; the full name goes in the tooltip.

    ONNX names from exporters repeat their structure ('/features/features.4/block/block.7/
    BatchNormalization_output_0'): the parts without a digit ('features', 'block') and the
    '_output_0' ending are dropped, and each label is the shortest tail of what is left that no
    other name shares ('features.4/block.7/BatchNormalization'), cut to `limit` characters at
    the right (the distinguishing parts come first). Names that still collide are numbered.
    """
    def parts(name: str) -> list[str]:
        pieces = [p for p in name.strip("/").split("/") if p] or [name]
        last = re.sub(r"_output_\d+$", "", pieces[-1]) or pieces[-1]
        return [p for p in pieces[:-1] if re.search(r"\d", p)] + [last]

    split = [parts(name) for name in names]
    # Each part is at least one character and a separator joins them, so a tail of more than
    # `limit` parts is cut anyway: only that many sizes are tried, each counted once over all names
    # (an analysis file may list any number of tensors with any number of parts).
    depth = min(limit, max(map(len, split), default=0))
    tails = [Counter(tuple(own[-size:]) for own in split) for size in range(1, depth + 1)]
    labels = []
    for own in split:
        sizes = range(1, min(len(own), depth) + 1)
        size = next((n for n in sizes if tails[n - 1][tuple(own[-n:])] == 1), len(own))
        text = "/".join(own[-size:])
        labels.append(text if len(text) <= limit else text[:limit - 1] + "…")
    seen: dict[str, int] = {}
    counts = Counter(labels)
    for index, label in enumerate(labels):
        if counts[label] > 1:
            seen[label] = seen.get(label, 0) + 1
            labels[index] = f"{label} #{seen[label]}"
    return labels


def sqnr_chart(analysis: dict, width: int = 760) -> str:
    """Inline SVG: one horizontal bar per quantized tensor (topological order), length = SQNR dB.

    Bars under SQNR_WARN_DB are red; the first layer where the error jumps is outlined.
    """
    entries = sorted(analysis["tensors"], key=lambda e: e.get("order", 0))
    if not entries:
        return "<p class='note'>The analysis lists no quantized tensors.</p>"
    finite = [_sqnr_value(e) for e in entries if math.isfinite(_sqnr_value(e))]
    top = max(finite + [SQNR_WARN_DB * 2]) * 1.1
    first_jump = (analysis.get("first_jump") or {}).get("tensor")
    labels = short_labels([str(entry.get("tensor", "?")) for entry in entries])
    label_width, bar_height, gap = 300, 16, 4
    plot = width - label_width - 70
    height = len(entries) * (bar_height + gap) + 46
    parts = [f"<svg id='sqnr-chart' role='img' aria-label='Per-layer SQNR' width='{width}' height='{height}' "
             f"viewBox='0 0 {width} {height}'>"]
    for tick in range(0, int(top) + 1, 10):
        x = label_width + plot * tick / top
        parts.append(f"<line x1='{x:.1f}' y1='0' x2='{x:.1f}' y2='{height - 36}' stroke='#eaeef2'/>"
                     f"<text x='{x:.1f}' y='{height - 22}' text-anchor='middle'>{tick}</text>")
    warn_x = label_width + plot * SQNR_WARN_DB / top
    parts.append(f"<line x1='{warn_x:.1f}' y1='0' x2='{warn_x:.1f}' y2='{height - 36}' stroke='#cf222e' stroke-dasharray='4 3'/>")
    for index, entry in enumerate(entries):
        y = index * (bar_height + gap)
        value = _sqnr_value(entry)
        shown = top if math.isinf(value) else max(value, 0.0)
        length = max(1.0, plot * shown / top)
        color = "#cf222e" if value < SQNR_WARN_DB else "#2da44e"
        outline = " stroke='#0969da' stroke-width='2'" if entry.get("tensor") == first_jump else ""
        name = f"{entry.get('tensor', '?')} ({entry.get('op', '')})"
        label = f"{labels[index]} ({entry.get('op', '')})"
        parts.append(
            f"<g class='bar'><title>{_e(name)}: SQNR {_e(_num(value, 2))} dB, cosine {_e(entry.get('cosine'))}</title>"
            f"<text x='{label_width - 6}' y='{y + 12}' text-anchor='end'>{_e(label)}</text>"
            f"<rect x='{label_width}' y='{y}' width='{length:.1f}' height='{bar_height}' fill='{color}'{outline}/>"
            f"<text x='{label_width + length + 4:.1f}' y='{y + 12}'>{_e(_num(value, 1))} dB</text></g>")
    parts.append(f"<text x='{label_width + plot / 2:.0f}' y='{height - 4}' text-anchor='middle'>SQNR (dB)</text></svg>")
    return "".join(parts)


def latency_chart(results: list[DeviceResult], width: int = 760) -> str:
    """Inline SVG: p50 latency bars with a p95 whisker per (bundle, device), log-scaled in ms."""
    rows = [r for r in results if r.ok and r.latency]
    if not rows:
        return "<p class='note'>No latency measurements.</p>"
    label_width, bar_height, gap = 260, 14, 5
    plot = width - label_width - 90
    low = math.log10(min(r.latency.min_ms for r in rows if r.latency.min_ms > 0) if any(r.latency.min_ms > 0 for r in rows) else 1e-3) - 0.2
    high = math.log10(max(r.latency.p95_ms for r in rows)) + 0.2
    span = max(high - low, 1e-6)

    def x_of(ms: float) -> float:
        return label_width + plot * (math.log10(max(ms, 10 ** low)) - low) / span

    height = len(rows) * (bar_height + gap) + 30
    parts = [f"<svg id='latency-chart' role='img' aria-label='Latency per bundle and device' width='{width}' "
             f"height='{height}' viewBox='0 0 {width} {height}'>"]
    for exponent in range(math.ceil(low), math.floor(high) + 1):
        x = x_of(10 ** exponent)
        parts.append(f"<line x1='{x:.1f}' y1='0' x2='{x:.1f}' y2='{height - 20}' stroke='#eaeef2'/>"
                     f"<text x='{x:.1f}' y='{height - 6}' text-anchor='middle'>{10 ** exponent:g} ms</text>")
    for index, r in enumerate(rows):
        y = index * (bar_height + gap)
        p50, p95 = x_of(r.latency.p50_ms), x_of(r.latency.p95_ms)
        label = f"{r.bundle} @ {r.device}" + (" (baseline)" if r.role == "baseline" else "")
        parts.append(
            f"<g class='bar'><title>{_e(label)}: p50 {r.latency.p50_ms:.4g} ms, p95 {r.latency.p95_ms:.4g} ms</title>"
            f"<text x='{label_width - 6}' y='{y + 11}' text-anchor='end'>{_e(label if len(label) <= 42 else '…' + label[-41:])}</text>"
            f"<rect x='{label_width}' y='{y}' width='{max(1.0, p50 - label_width):.1f}' height='{bar_height}' "
            f"fill='{'#8c959f' if r.role == 'baseline' else '#0969da'}'/>"
            f"<line x1='{p50:.1f}' y1='{y + bar_height / 2}' x2='{p95:.1f}' y2='{y + bar_height / 2}' stroke='#1b1f24'/>"
            f"<line x1='{p95:.1f}' y1='{y + 2}' x2='{p95:.1f}' y2='{y + bar_height - 2}' stroke='#1b1f24'/>"
            f"<text x='{p95 + 4:.1f}' y='{y + 11}'>{r.latency.p50_ms:.3g} ms</text></g>")
    parts.append("</svg>")
    return "".join(parts)


def _emulated(r: DeviceResult) -> bool:
    """Timed on an emulated board (qemu): its wall time is not the board's."""
    return r.device_kind == "qemu" or bool((r.identity or {}).get("emulated"))


def _versus_float(r: DeviceResult) -> str:
    """'−0.17 pp vs FP32' from the reference's accuracy on the same samples, or ''."""
    reference = (r.fidelity or {}).get("reference_accuracy")
    if r.accuracy is None or not isinstance(reference, (int, float)):
        return ""
    delta = 100 * (r.accuracy - reference)
    return f"{'+' if delta >= 0 else '−'}{abs(delta):.2f} pp vs FP32"


def _failed_pairs(gate: GateReport | None) -> set[tuple[str, str]]:
    return {(row.bundle, row.device) for row in gate.rows if row.failed} if gate else set()


def _agreement(r: DeviceResult) -> str:
    """The agreement cell (DeviceResult.agreement), marked "mAP50" for a detector."""
    return ("mAP50 " if r.task == DETECTION and r.agreement is not None else "") + _pct(r.agreement)


def _steps_cell(fidelity: dict | None) -> tuple[str, str]:
    """(line under the SQNR cell, tooltip): the scored output's largest difference in its
    quantization steps and the share more than one step off, or that it has no step."""
    if not fidelity or "max_steps" not in fidelity:  # no fidelity, or results written before steps were counted
        return "", ""
    steps, far, step = fidelity.get("max_steps"), fidelity.get("far_fraction"), fidelity.get("step")
    if steps is None:
        return "no step (float output)", ""
    far_text = f", {100 * far:.2f}% of elements more than one step off" if isinstance(far, (int, float)) else ""
    step_text = f"{step:.4g}" if isinstance(step, (int, float)) else _num(step)
    return f"max {_num(steps, 2)} steps", f"step {step_text}{far_text}"


def _results_table(results: list[DeviceResult], gate: GateReport | None = None) -> str:
    """One row per result, narrow enough for a 1280 px window: the bundle's target, arch and
    precision under its name, p95 in the p50 cell's tooltip, the error column only when a run
    failed, and whole-bundle file bytes left to summary.md."""
    errors = any(not r.ok for r in results)
    head = ["bundle", "device", "status", "accuracy", "agreement vs FP32", "SQNR vs FP32 dB", "p50 ms",
            "B/A latency", "instructions", "ROM bytes", "RAM bytes"] + (["error"] if errors else [])
    left = {"bundle", "device", "status", "error"}
    failed = _failed_pairs(gate)
    out = ["<div class='scroll'><table id='results' class='sortable'><thead><tr>"]
    out += [f"<th class='{'l' if h in left else ''}'>{_e(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    for r in results:
        fidelity = r.fidelity or {}
        latency = r.latency
        sqnr = fidelity.get("sqnr_db")
        name = r.bundle + (" (baseline)" if r.role == "baseline" else "")
        p95 = f"p95 {_num(latency.p95_ms, 4)} ms" if latency else ""
        versus_float = _versus_float(r)
        # (css class, text, sort value, line under the text, tooltip)
        cells = [
            ("l name", name, None, f"{r.target} · {r.arch} · {r.precision}", ""),
            ("l", r.device, None, "emulated" if _emulated(r) else "", ""),
            ("l", r.status, None, "", ""),
            ("", _pct(r.accuracy), r.accuracy, versus_float,
             f"FP32 {_pct(fidelity.get('reference_accuracy'))}" if versus_float else ""),
            ("", _agreement(r), r.agreement, "", ""),
            ("", _num(sqnr, 1), sqnr if isinstance(sqnr, (int, float)) and math.isfinite(sqnr) else 1e9
             if sqnr is not None else None, *_steps_cell(r.fidelity)),
            ("", _num(latency.p50_ms, 4) if latency else "", latency.p50_ms if latency else None, "", p95),
            ("", _num(r.latency_ratio, 3), r.latency_ratio, "", ""),
            ("", _bytes(r.instructions.per_inference) if r.instructions else "",
             r.instructions.per_inference if r.instructions else None, "", ""),
            ("", _bytes(r.sizes.get("rom_bytes")), r.sizes.get("rom_bytes"), "", ""),
            ("", _bytes(r.sizes.get("ram_bytes")), r.sizes.get("ram_bytes"), "", ""),
        ] + ([("err", r.error or "", None, "", r.stderr_tail or "")] if errors else [])
        gate_failed = r.role != "baseline" and (r.bundle, r.device) in failed
        row_class = "error" if not r.ok else "gate-fail" if gate_failed else ""
        out.append(f"<tr class='{row_class}'>")
        for css, text, sort_value, sub, tip in cells:
            data = "" if sort_value is None else f" data-v='{_e(sort_value)}'"
            title = f" title='{_e(tip)}'" if tip else ""
            below = f"<div class='sub'>{_e(sub)}</div>" if sub else ""
            out.append(f"<td class='{css}'{data}{title}>{_e(text)}{below}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _identity_section(results: list[DeviceResult]) -> str:
    """Which device, emulator and toolchain produced each number."""
    devices: dict[str, dict] = {}
    toolchains: dict[str, dict] = {}
    for r in results:
        if r.identity:
            devices.setdefault(r.device, r.identity)
            toolchains.setdefault(r.bundle, r.identity.get("toolchain", {}))
    if not devices:
        return ""
    out = ["<h2>Devices and toolchains</h2><table id='identity'><thead><tr><th class='l'>device</th>"
           "<th class='l'>kind</th><th class='l'>arch</th><th class='l'>system</th><th class='l'>timer</th>"
           "</tr></thead><tbody>"]
    for name, ident in devices.items():
        system = ident.get("emulator") or ident.get("uname") or ident.get("platform", "")
        out.append(f"<tr><td class='l'>{_e(name)}</td><td class='l'>{_e(ident.get('kind'))}</td>"
                   f"<td class='l'>{_e(ident.get('arch'))}</td><td class='l'>{_e(system)}</td>"
                   f"<td class='l'>{_e(ident.get('timer'))}</td></tr>")
    out.append("</tbody></table><table id='toolchains'><thead><tr><th class='l'>bundle</th>"
               "<th class='l'>toolchain</th></tr></thead><tbody>")
    for bundle, versions in toolchains.items():
        text = ", ".join(f"{key} {value}" for key, value in sorted(versions.items()))
        out.append(f"<tr><td class='l'>{_e(bundle)}</td><td class='wrap'>{_e(text)}</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _gate_section(gate: GateReport | None) -> str:
    if gate is None:
        return "<p class='note'>No gate was run for these results.</p>"
    out = ["<table id='gate'><thead><tr><th class='l'>bundle</th><th class='l'>device</th><th class='l'>verdict</th>"
           "<th class='l'>checks</th><th class='l'>reasons</th></tr></thead><tbody>"]
    for row in gate.rows:
        checks = "; ".join(f"{c.metric} {c.change}" + ("" if c.passed else " ✗") for c in row.shown_checks())
        out.append(f"<tr class='v-{_e(row.verdict)}'><td class='l'>{_e(row.bundle)}</td><td class='l'>{_e(row.device)}</td>"
                   f"<td class='l'>{_e(row.verdict.upper())}</td><td class='wrap'>{_e(checks)}</td>"
                   f"<td class='err'>{_e('; '.join(row.reasons))}</td></tr>")
    out.append("</tbody></table>")
    limits = gate.thresholds
    out.append(f"<p class='note'>Limits: accuracy drop ≤ {limits.max_accuracy_drop:g} pp, agreement drop ≤ "
               f"{limits.max_fidelity_drop:g} pp, SQNR drop ≤ {limits.max_sqnr_drop:g} dB, latency ≤ +{100 * limits.max_latency_increase:g}%"
               + (f", instructions ≤ +{100 * limits.max_instructions_increase:g}%"
                  if limits.max_instructions_increase is not None else "") + ", size ≤ "
               f"+{100 * limits.max_size_increase:g}%"
               + (f"; waived: {_e(', '.join(gate.waived))}" if gate.waived else "") + ".</p>")
    return "".join(out)


def _verdict_badge(gate: GateReport | None) -> str:
    if gate is None:
        return "<span class='verdict none' id='verdict'>NO GATE</span>"
    if gate.passed:
        return "<span class='verdict pass' id='verdict'>GATE PASS</span>"
    return f"<span class='verdict fail' id='verdict'>GATE FAIL ({len(gate.regressions)} regression(s))</span>"


def render_html(results: Results, analysis: dict | None = None, gate: GateReport | None = None,
                title: str = "fwedge report", profiles: list | None = None) -> str:
    """The whole report as one HTML string with no external references."""
    ok = sum(r.ok for r in results.results)
    host = results.host if isinstance(results.host, dict) else {}
    meta = (f"{_e(results.created)} · data {_e(results.data)} · {_e(results.samples)} samples · "
            f"{_e(results.repeats)} timed runs · {ok}/{len(results.results)} runs ok · host {_e(host.get('node', ''))} "
            f"({_e(host.get('machine', ''))})")
    body = [f"<h1>{_e(title)}</h1><div class='meta'>{meta}</div>", _verdict_badge(gate)]
    if gate is not None and gate.regressions:
        body.append("<ul id='regressions'>" + "".join(f"<li>{_e(line)}</li>" for line in gate.regressions) + "</ul>")
    # The first screen answers the reviewer: the verdict, what changed against the baseline and
    # which rows failed, then the figures of every run.
    body.append("<h2>Against the baseline</h2>")
    body.append(_gate_section(gate))
    body.append("<h2>Accuracy, latency and size per target and device</h2>")
    body.append(_results_table(results.results, gate))
    for note in results.notes:
        body.append(f"<p class='note'>{_e(note)}</p>")
    body.append("<h2>Latency (p50 bar, p95 whisker, on-device timer)</h2>")
    body.append(latency_chart(results.results))
    body.append("<h2>Per-layer SQNR of the quantized model</h2>")
    if analysis is None:
        body.append("<p class='note'>No analysis given (fwedge analyze FLOAT QDQ --json FILE).</p>")
    else:
        jump = analysis.get("first_jump")
        body.append(f"<p class='note'>{_e(analysis.get('samples', '?'))} samples; red bars are below {SQNR_WARN_DB:g} dB"
                    + (f"; error first jumps at '{_e(jump.get('tensor'))}' ({_e(jump.get('op'))})" if jump else "")
                    + ".</p>")
        body.append(sqnr_chart(analysis))
    body.append("<h2>Per-layer time on the device (fwedge profile)</h2>")
    body.append(profile_section(profiles))
    body.append(_identity_section(results.results))
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">"
            f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>"
            + "".join(body) + f"<script>{SCRIPT}</script></body></html>\n")


# Markdown that would start a link, an image, code or emphasis; job summaries also render
# HTML, hence the entities for < > &.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\](){}#!|~+])")


def _markdown_text(text) -> str:
    """One line of plain text for a Markdown table cell: nothing in it is markup."""
    flat = " ".join(str(text).split())
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(flat, quote=False))


def render_markdown(results: Results, gate: GateReport | None = None) -> str:
    """A GitHub job-summary table: verdict, one row per result, regressions."""
    if gate is None:
        verdict = "no gate run"
    else:
        verdict = "✅ PASS" if gate.passed else f"❌ FAIL ({len(gate.regressions)} regression(s))"
    def cell(text) -> str:
        return _markdown_text(text)

    lines = [f"## fwedge: {verdict}", "",
             f"{cell(results.samples)} samples of {cell(results.data)}, {cell(results.repeats)} timed runs per pair.", "",
             "| bundle | device | status | accuracy | agreement | p50 ms | p95 ms | B/A | instructions | ROM bytes "
             "| RAM bytes | file bytes |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    failed = _failed_pairs(gate)
    for r in results.results:
        latency = r.latency
        flag = "❌ " if r.role != "baseline" and (r.bundle, r.device) in failed else ""
        versus_float = _versus_float(r)
        lines.append("| " + " | ".join(cell(v) for v in [
            flag + r.bundle + (" (baseline)" if r.role == "baseline" else ""),
            r.device + (" (emulated)" if _emulated(r) else ""),
            r.status if r.ok else f"error: {r.error}",
            _pct(r.accuracy) + (f" ({versus_float})" if versus_float else ""),
            _agreement(r),
            _num(latency.p50_ms, 4) if latency else "",
            _num(latency.p95_ms, 4) if latency else "", _num(r.latency_ratio, 3),
            _bytes(r.instructions.per_inference) if r.instructions else "", _bytes(r.sizes.get("rom_bytes")),
            _bytes(r.sizes.get("ram_bytes")), _bytes(r.sizes.get("file_bytes")),
        ]) + " |")
    lines += ["", "B/A: this bundle's p50 over the baseline bundle's, timed interleaved in the same run (blank "
              "without farm run --baseline-bundles). On emulated boards wall time is not the board's: the "
              "gate compares their executed instructions. ROM/RAM: the model's code, weights and arena "
              "(C bundles); file bytes: the whole bundle folder, sources included."]
    if gate is not None and gate.regressions:
        lines += ["", "### Regressions", ""] + [f"- {cell(line)}" for line in gate.regressions]
    return "\n".join(lines) + "\n"


def write_report(
    results_path: str | os.PathLike,
    html_path: str | os.PathLike,
    analysis_path: str | os.PathLike | None = None,
    gate: GateReport | None = None,
    markdown_path: str | os.PathLike | None = None,
    title: str = "fwedge report",
    profile_path: str | os.PathLike | None = None,
) -> ReportFiles:
    """Write the HTML report (and optionally the Markdown summary) atomically.

    Args:
        results_path: farm results JSON.
        html_path: where the HTML goes.
        analysis_path: `fwedge analyze --json` output for the SQNR chart.
        gate: a gate verdict to show (see fwedge.device_farm.gate.evaluate_gate).
        markdown_path: where the Markdown summary goes.
        profile_path: `fwedge profile --json` output for the per-layer time charts.

    Returns:
        ReportFiles.

    Raises:
        GateError: unreadable results or analysis.
        DataError: an unreadable or malformed profile.
    """
    from fwedge.ir import write_atomic

    results = load_results(results_path)
    analysis = load_analysis(analysis_path) if analysis_path else None
    profiles = load_profiles(profile_path) if profile_path else None
    html_file = write_atomic(html_path, render_html(results, analysis, gate, title, profiles))
    markdown_file = write_atomic(markdown_path, render_markdown(results, gate)) if markdown_path else None
    return ReportFiles(html=html_file, markdown=markdown_file)
