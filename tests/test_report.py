"""Reports: one self-contained HTML file (checked in headless Chromium) and a Markdown summary."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fwedge.cli import cli
from fwedge.device_farm import gate
from fwedge.device_farm.results import DeviceResult, Latency, Results, save_results
from fwedge.report import render_html, render_markdown

HOSTILE = "<script>alert('x')</script>|name"


def _results() -> Results:
    def ok(bundle, device, accuracy, p50, **extra):
        return DeviceResult(bundle=bundle, device=device, status="ok", target=extra.pop("target", "onnx"),
                            arch=extra.pop("arch", "x86_64"), precision="int8", accuracy=accuracy,
                            fidelity={"top1_agreement": accuracy + 0.05, "sqnr_db": 21.5, "cosine": 0.99,
                                      "max_abs_error": 0.3, "samples": 500},
                            latency=Latency(p50, p50 * 1.2, p50 * 1.1, p50 * 0.9, 20),
                            sizes={"file_bytes": 40000, "rom_bytes": 30000, "ram_bytes": 9000}, samples=500, **extra)

    return Results(results=[
        ok("cnn-onnx", "host", 0.91, 0.05),
        ok("cnn-aarch64", "qemu-aarch64", 0.905, 2.5, target="c", arch="aarch64"),
        ok(HOSTILE, "host", 0.80, 0.07),
        DeviceResult(bundle="cnn-riscv64", device="qemu-riscv64", status="error", target="c", arch="riscv64",
                     error="qemu-riscv64: killed by SIGSEGV", stderr_tail="qemu: uncaught target signal 11"),
    ], data="fashion-mnist:test", samples=500, repeats=20, created="2026-01-01T00:00:00+00:00",
        host={"node": "ci", "machine": "x86_64"})


def _analysis() -> dict:
    """`fwedge analyze --json` shaped output (fwedge.layer_analysis.LayerAnalysis.to_dict)."""
    names = [("input", "Conv"), ("conv1", "Conv+Relu"), ("pool1", "MaxPool"), ("conv2", "Conv+Relu"),
             ("fc1", "Gemm+Relu"), ("logits", "Gemm")]
    values = [41.0, 33.5, 33.5, 12.0, 24.0, 22.5]
    tensors = [{"tensor": name, "node": name, "op": op, "order": i, "sqnr_db": value, "cosine": 0.99,
                "max_abs_error": 0.1, "upstream_sqnr_db": None, "jump_db": None}
               for i, ((name, op), value) in enumerate(zip(names, values))]
    tensors[0]["sqnr_db"] = "inf"
    return {"samples": 256, "jump_threshold_db": 6.0, "first_jump": tensors[3], "largest_jump": tensors[3],
            "tensors": sorted(tensors, key=lambda t: 1e9 if t["sqnr_db"] == "inf" else t["sqnr_db"]), "notes": []}


def _gate(results: Results) -> gate.GateReport:
    baseline = Results(results=[r for r in results.results if r.ok] + [
        DeviceResult(bundle="cnn-onnx", device="board", status="ok", accuracy=0.9)],
        data=results.data, samples=results.samples)
    return gate.evaluate_gate(results, baseline)


def test_html_is_self_contained_and_escapes_names():
    results = _results()
    page = render_html(results, _analysis(), _gate(results))
    assert page.count("<script") == 1, "only the report's own inline script"
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert not re.search(r"(src|href)\s*=", page) and "http://" not in page and "https://" not in page
    assert "default-src 'none'" in page
    assert page.count("<tr class=") == 4 + len(_gate(results).rows)
    sqnr = page[page.index("<svg id='sqnr-chart'"):]
    assert sqnr[:sqnr.index("</svg>")].count("<rect") == 6
    assert "GATE FAIL" in page and "cnn-onnx on board: missing" in page


def test_markdown_summary_lists_every_result_and_regression():
    results = _results()
    text = render_markdown(results, _gate(results))
    assert text.startswith("## fwedge: ❌ FAIL")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 4
    assert "\\|name" in text, "a pipe in a name must not split the table"
    assert "- cnn-riscv64 on qemu-riscv64: error on the device: qemu-riscv64: killed by SIGSEGV" in text


def test_report_command_writes_html_and_markdown(tmp_path):
    results_path = save_results(_results(), tmp_path / "results.json")
    (tmp_path / "analysis.json").write_text(json.dumps(_analysis()))
    verdict = CliRunner().invoke(cli, ["gate", str(results_path), "--baseline", str(results_path),
                                       "--json", str(tmp_path / "gate.json")])
    assert verdict.exit_code == 1  # the error result fails the gate even against itself
    done = CliRunner().invoke(cli, ["report", str(results_path), "--analysis", str(tmp_path / "analysis.json"),
                                    "--gate", str(tmp_path / "gate.json"), "-o", str(tmp_path / "r.html"),
                                    "--markdown", str(tmp_path / "s.md")])
    assert done.exit_code == 0, done.output
    assert "GATE FAIL" in (tmp_path / "r.html").read_text() and (tmp_path / "s.md").read_text().startswith("## fwedge")
    bad = CliRunner().invoke(cli, ["report", str(results_path), "--analysis", str(results_path), "-o", str(tmp_path / "x.html")])
    assert bad.exit_code == 2 and "tensors" in bad.output


def _chromium(tmp_path: Path, page: Path, *mode: str, size: str = "1200,1600") -> tuple[str, str]:
    argv = ["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / ('profile-' + mode[0].strip('-').split('=')[0])}",
            "--enable-logging=stderr", "--v=0", f"--window-size={size}", *mode, page.resolve().as_uri()]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.mark.chromium
def test_report_renders_in_headless_chromium(tmp_path):
    results = _results()
    page = tmp_path / "report.html"
    page.write_text(render_html(results, _analysis(), _gate(results)))
    dom, log = _chromium(tmp_path, page, "--dump-dom")
    assert _console_errors(log) == []
    assert 'data-ready="yes"' in dom, "the inline script did not run"
    table = dom[dom.index('<table id="results"'):]
    table = table[:table.index("</table>")]
    assert table.count("<tr") == 1 + 4 and "cnn-aarch64" in table and "qemu-aarch64" in table
    chart = dom[dom.index('<svg id="sqnr-chart"'):]
    chart = chart[:chart.index("</svg>")]
    widths = [float(w) for w in re.findall(r'<rect [^>]*width="([0-9.]+)"', chart)]
    assert len(widths) == 6 and min(widths) > 1, widths
    assert '<svg id="latency-chart"' in dom

    shot = tmp_path / "report.png"
    _, log = _chromium(tmp_path, page, f"--screenshot={shot}")
    assert _console_errors(log) == []
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (1600, 1200)
    not_white = np.any(pixels < 235, axis=2).mean()
    assert not_white > 0.02, f"screenshot looks blank ({100 * not_white:.2f}% non-white)"
    red = ((pixels[..., 0] > 180) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)).sum()
    green = ((pixels[..., 1] > 130) & (pixels[..., 0] < 90) & (pixels[..., 2] < 120)).sum()
    assert red > 200 and green > 200, f"SQNR bars / verdict colours missing (red {red}, green {green})"


@pytest.mark.chromium
def test_console_error_detection_catches_a_broken_page(tmp_path):
    """The console check above can fail: a page that throws is caught."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><p>x</p><script>throw new Error('boom')</script></body></html>")
    _, log = _chromium(tmp_path, page, "--dump-dom")
    assert any("Uncaught Error: boom" in line for line in _console_errors(log))


def test_failing_rows_are_marked_and_emulated_boards_named():
    """A row the gate failed has class 'gate-fail' (a run error keeps 'error'); qemu timings say they
    are emulated; the summary gives ROM/RAM and says what B/A is."""
    import dataclasses

    results = _results()
    results.results[1] = dataclasses.replace(results.results[1], device_kind="qemu")
    baseline = Results(results=[dataclasses.replace(r, accuracy=0.95) if r.bundle == "cnn-aarch64" else r
                                for r in results.results if r.ok], data=results.data, samples=results.samples)
    verdict = gate.evaluate_gate(results, baseline)
    assert ("cnn-aarch64", "qemu-aarch64") in {(row.bundle, row.device) for row in verdict.rows if row.failed}
    page = render_html(results, None, verdict)
    table = page[page.index("<table id='results'"):]
    table = table[:table.index("</table>")]
    rows = re.findall(r"<tr class='([^']*)'>(.*?)</tr>", table)
    classes = {re.search(r"<td class='l name'[^>]*>([^<]*)<", body).group(1): css for css, body in rows}
    assert classes["cnn-aarch64"] == "gate-fail" and classes["cnn-riscv64"] == "error" and classes["cnn-onnx"] == ""
    assert "qemu-aarch64<div class='sub'>emulated</div>" in table and "host<div class='sub'>emulated" not in table
    summary = render_markdown(results, verdict)
    assert "| ROM bytes | RAM bytes | file bytes |" in summary and "| 30,000 | 9,000 | 40,000 |" in summary
    assert "❌ cnn-aarch64" in summary and "B/A: this bundle's p50 over the baseline bundle's" in summary


def test_sqnr_labels_tell_the_layers_apart():
    from fwedge.report import short_labels

    names = [f"/features/features.{b}/block/block.{i}/{op}_output_0" for b in (3, 4) for i, op in
             ((2, "Clip"), (7, "BatchNormalization"))] + ["/features/features.4/Add_output_0", "logits", "logits"]
    labels = short_labels(names)
    assert labels[:4] == ["features.3/block.2/Clip", "features.3/block.7/BatchNormalization",
                          "features.4/block.2/Clip", "features.4/block.7/BatchNormalization"]
    assert labels[4] == "Add" and labels[5:] == ["logits #1", "logits #2"]
    assert short_labels(["/a/" + "x1" * 40])[0].endswith("…") and len(short_labels(["/a/" + "x1" * 40])[0]) == 40


def _ci_results() -> tuple[Results, gate.GateReport]:
    """What the CI workflow's farm run gives: three C bundles and their baseline bundles on qemu
    boards with instruction counts, the host runtimes, one failed run; the riscv64 bundle fails
    the gate on accuracy."""
    import dataclasses

    from fwedge.device_farm.results import Instructions

    def run(bundle, device, target, arch, role="candidate", accuracy=0.922, **extra):
        qemu = device.startswith("qemu")
        return DeviceResult(
            bundle=bundle, device=device, status="ok", target=target, arch=arch, precision="int8", role=role,
            device_kind="qemu" if qemu else "local", accuracy=accuracy,
            fidelity={"top1_agreement": 0.994, "sqnr_db": 24.31, "cosine": 0.998, "max_abs_error": 0.41, "samples": 500,
                      "reference_accuracy": 0.9237},
            latency=Latency(16.046646, 20.378522, 13.917565, 7.940775, 20), latency_ratio=0.96749 if qemu else 1.0213,
            instructions=Instructions(1898381, 1, 2, 1903251, 3801632, "qemu-aarch64 version 7.2.22", "default",
                                      "fwedge qemu plugin d1013ec09794120e") if qemu else None,
            baseline_instructions=1898381 if qemu and role == "candidate" else None,
            sizes={"file_bytes": 1086183, "rom_bytes": 142473, "ram_bytes": 52932, "text_bytes": 40492},
            samples=500, **extra)

    model = "mobilenet_v2_tiny"
    rows = []
    for arch in ("aarch64", "riscv64", "loongarch64"):
        for role in ("candidate", "baseline"):
            rows.append(run(f"{model}-{arch}-int8", f"qemu-{arch}", "c", arch, role,
                            accuracy=0.9 if arch == "riscv64" and role == "candidate" else 0.922))
    for target in ("onnx", "openvino", "tflite", "ncnn"):
        rows.append(run(f"{model}-{target}-int8", "host", target, "x86_64"))
    rows.append(DeviceResult(bundle=f"{model}-x86_64-int8", device="host", status="error", target="c", arch="x86_64",
                             precision="int8", role="candidate", device_kind="local",
                             error="fwedge_model exited with status -11 (SIGSEGV) after 3 of 500 samples; "
                                   "the harness printed no closing line", stderr_tail="Segmentation fault"))
    results = Results(results=rows, data="fashion-mnist:test", samples=500, repeats=20,
                      created="2026-12-02T14:48:44+00:00", host={"node": "ci", "machine": "x86_64"})
    baseline = Results(results=[dataclasses.replace(r, accuracy=0.922) for r in rows if r.ok and r.role == "candidate"],
                       data=results.data, samples=results.samples)
    return results, gate.evaluate_gate(results, baseline)


# Run after the page's own script: what a reader would have to scroll sideways, in CSS pixels.
LAYOUT_PROBE = """
(function(){
  var doc = document.scrollingElement, out = {document: [doc.scrollWidth, doc.clientWidth], boxes: []};
  document.querySelectorAll('.scroll, table').forEach(function(box){
    out.boxes.push([box.id || box.className, box.scrollWidth, box.clientWidth,
                    Math.ceil(box.getBoundingClientRect().right)]);
  });
  document.body.setAttribute('data-layout', JSON.stringify(out));
})();
"""


@pytest.mark.chromium
def test_report_first_screen_fits_1280_px(tmp_path):
    """At 1280 px no table needs horizontal scrolling, the verdict and the gate table come first,
    and the failing row carries its class; the screenshot is kept for the reader."""
    import base64
    import hashlib

    from fwedge.report import CSP

    results, verdict = _ci_results()
    page_text = render_html(results, _analysis(), verdict)
    probe_hash = "'sha256-" + base64.b64encode(hashlib.sha256(LAYOUT_PROBE.encode()).digest()).decode() + "'"
    probed = page_text.replace(CSP, CSP.replace("script-src ", f"script-src {probe_hash} "), 1)
    probed = probed.replace("</body>", f"<script>{LAYOUT_PROBE}</script></body>", 1)
    page = tmp_path / "report.html"
    page.write_text(probed)
    dom, log = _chromium(tmp_path, page, "--dump-dom", size="1280,1400")
    assert _console_errors(log) == []
    layout = json.loads(__import__("html").unescape(re.search(r'data-layout="([^"]*)"', dom).group(1)))
    width = layout["document"][1]
    assert 1200 <= width <= 1280, layout
    assert layout["document"][0] <= width, f"the page scrolls sideways: {layout}"
    for name, scroll_width, client_width, right in layout["boxes"]:
        assert scroll_width <= client_width and right <= width, f"{name} needs horizontal scrolling: {layout}"
    order = [dom.index(marker) for marker in ('id="verdict"', '<table id="gate"', '<table id="results"')]
    assert order == sorted(order), "the verdict, then the gate table, then the results"
    results_table = dom[dom.index('<table id="results"'):]
    failing = re.findall(r'<tr class="gate-fail">.*?</tr>', results_table[:results_table.index("</table>")], re.S)
    assert len(failing) == 1 and "mobilenet_v2_tiny-riscv64-int8" in failing[0]
    assert "−2.37 pp vs FP32" in failing[0] and 'title="FP32 92.37%"' in failing[0], "the drop against float"
    assert r"92.20% \(−0.17 pp vs FP32\)" in render_markdown(results, verdict)

    shot = tmp_path / "report-1280.png"
    _, log = _chromium(tmp_path, page, f"--screenshot={shot}", size="1280,1400")
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (1400, 1280) and np.any(pixels < 235, axis=2).mean() > 0.02


def test_sqnr_labels_of_a_hostile_analysis_stay_short_and_distinct():
    """An analysis from a stranger: thousands of names of sixty parts each. Every label stays
    within the limit and the labels stay distinct (only the last 40 parts are ever compared)."""
    from fwedge.report import short_labels

    names = ["/".join(f"p{i}" for i in range(60)) + f"/t{n}" for n in range(3000)]
    labels = short_labels(names)
    assert len(set(labels)) == 3000 and all(len(label) <= 40 for label in labels)
    assert labels[7] == "t7"
