"""report.html built from hostile results, analysis and gate verdicts runs no injected script."""
from __future__ import annotations

import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fwedge.device_farm import gate
from fwedge.device_farm.results import DeviceResult, Latency, Results
from fwedge.report import CSP, render_html, render_markdown

# What an injected script would write; the payloads build it at run time (fromCharCode), so it
# can only appear in the DOM if a script ran.
MARKER = "PWNED-42"
JS = "document.title=String.fromCharCode(80,87,78,69,68)+'-'+(6*7);document.documentElement.setAttribute('data-x',document.title)"
PAYLOADS = [
    f"<script>{JS}</script>",
    f"\"><script>{JS}</script>",
    f"'><script>{JS}</script><p title='",
    f"<img src=x onerror=\"{JS}\">",
    f"<svg onload=\"{JS}\"></svg>",
    f"</title></style></svg></table><script>{JS}</script>",
    f"' onmouseover='{JS}' x='",
    f"\" onfocus=\"{JS}\" autofocus=\"",
    f"<a href=\"javascript:{JS}\">x</a>",
    f"<iframe srcdoc=\"<script>{JS}</script>\"></iframe>",
    f"<style>body{{display:none}}</style><script>{JS}</script>",
    f"<!--<script>{JS}</script>-->",
    f"<details open ontoggle=\"{JS}\">",
    f"<meta http-equiv=\"refresh\" content=\"0;url=javascript:{JS}\">",
]


def _hostile(index: int) -> str:
    return PAYLOADS[index % len(PAYLOADS)] + f"#{index}"


def hostile_inputs() -> tuple[Results, dict, gate.GateReport]:
    """Results, analysis and gate verdict with a payload in every string field."""
    counter = iter(range(10_000))

    def h() -> str:
        return _hostile(next(counter))

    def result(status="ok") -> DeviceResult:
        return DeviceResult(
            bundle=h(), device=h(), status=status, target=h(), arch=h(), precision=h(), device_kind=h(), role=h(),
            bundle_path=h(), samples=500, accuracy=0.9,
            fidelity={"top1_agreement": 0.95, "sqnr_db": h(), "cosine": h()},
            latency=Latency(1.0, 1.2, 1.1, 0.9, 20), latency_ratio=1.0, baseline_bundle=h(),
            sizes={"file_bytes": 100, "rom_bytes": 10, "ram_bytes": 10, h(): h()},
            identity={"kind": h(), "arch": h(), "uname": h(), "timer": h(), "emulator": h(),
                      "toolchain": {h(): h(), "onnx": h()}},
            reference=h(), error=h(), stderr_tail=h())

    results = Results(results=[result(), result("error"), result()], data=h(), samples=h(), repeats=h(), created=h(),
                      host={"node": h(), "machine": h()}, notes=[h(), h()], fwedge_version=h())
    tensors = [{"tensor": h(), "node": h(), "op": h(), "order": i, "sqnr_db": value, "cosine": h(),
                "max_abs_error": h()} for i, value in enumerate([30.0, 12.0, "inf"])]
    analysis = {"samples": h(), "first_jump": {"tensor": h(), "op": h()}, "tensors": tensors, "notes": [h()]}
    rows = [gate.GateRow(bundle=h(), device=h(), verdict=h(), reasons=[h(), h()],
                         checks=[gate.Check(metric=h(), baseline=0.9, current=0.8, change=h(), limit=h(), passed=False)])
            for _ in range(2)]
    verdict = gate.GateReport(rows=rows + [gate.GateRow(bundle=h(), device=h(), verdict="fail", reasons=[h()])],
                              thresholds=gate.Thresholds(), waived=[h(), h()])
    return results, analysis, verdict


class _Elements(HTMLParser):
    """Every start tag with its attributes, as a browser's tokenizer sees them."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


# The report's own elements and attributes; anything else came from the data.
OWN_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "div", "span", "ul", "li", "p", "table",
            "thead", "tbody", "tr", "th", "td", "svg", "line", "text", "g", "rect", "script"}
OWN_ATTRIBUTES = {"lang", "charset", "http-equiv", "content", "class", "id", "data-v", "title", "role", "aria-label",
                  "width", "height", "viewbox", "x", "y", "x1", "y1", "x2", "y2", "stroke", "stroke-width",
                  "stroke-dasharray", "fill", "text-anchor"}


def test_every_hostile_string_is_escaped_in_the_html():
    results, analysis, verdict = hostile_inputs()
    page = render_html(results, analysis, verdict, title=PAYLOADS[0])
    parser = _Elements()
    parser.feed(page)
    tags = [tag for tag, _ in parser.tags]
    assert set(tags) <= OWN_TAGS, set(tags) - OWN_TAGS
    assert tags.count("script") == 1 and tags.count("style") == 1 and tags.count("meta") == 2
    for tag, attributes in parser.tags:
        assert set(attributes) <= OWN_ATTRIBUTES, (tag, set(attributes) - OWN_ATTRIBUTES)
    assert "unsafe-inline" not in CSP and "script-src 'sha256-" in CSP


def test_markdown_summary_escapes_html_and_code_spans():
    results, _, verdict = hostile_inputs()
    text = render_markdown(results, verdict)
    assert "<" not in text and ">" not in text and "`" not in text.replace("\\`", "")
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + len(results.results)
    for row in rows:  # a pipe in a value must not add a cell: every unescaped pipe is the table's
        assert len(re.findall(r"(?<!\\)\|", row)) == 13, row  # 12 columns
    for line in text.splitlines():
        assert not re.search(r"(?<!\\)[\[\]!]", line), line  # no link or image syntax


def _chromium(tmp_path: Path, page: Path) -> tuple[str, str]:
    argv = ["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
            "--virtual-time-budget=2000", "--dump-dom", page.resolve().as_uri()]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


@pytest.mark.chromium
def test_hostile_report_runs_no_injected_script_in_headless_chromium(tmp_path):
    results, analysis, verdict = hostile_inputs()
    page = tmp_path / "report.html"
    page.write_text(render_html(results, analysis, verdict))
    dom, log = _chromium(tmp_path, page)
    assert MARKER not in dom and "data-x=" not in dom, "an injected script ran"
    assert 'data-ready="yes"' in dom, "the report's own script did not run"
    violations = [line for line in log.splitlines() if "Content Security Policy" in line or "Uncaught" in line]
    assert violations == [], violations


@pytest.mark.chromium
def test_the_marker_check_can_fail(tmp_path):
    """A page that does run one payload shows the marker in the dumped DOM."""
    page = tmp_path / "injected.html"
    page.write_text(f"<!DOCTYPE html><html><head><title>x</title></head><body>{PAYLOADS[0]}</body></html>")
    dom, _ = _chromium(tmp_path, page)
    assert MARKER in dom


@pytest.mark.chromium
def test_the_policy_blocks_markup_that_escaping_missed(tmp_path):
    """Defence in depth: an inline script, a handler and a style element slipped into the page by
    hand do not run; the report's own script (allowed by its hash) still does."""
    results, analysis, verdict = hostile_inputs()
    page_text = render_html(results, analysis, verdict)
    slipped = f"<script>{JS}</script><img src='data:,' onerror=\"{JS}\"><style>body{{display:none}}</style>"
    page = tmp_path / "slipped.html"
    page.write_text(page_text.replace("<h2>", slipped + "<h2>", 1))
    dom, log = _chromium(tmp_path, page)
    assert MARKER not in dom and "data-x=" not in dom, "the policy let an injected script run"
    assert 'data-ready="yes"' in dom
    assert "Content Security Policy" in log, "the blocked script should be reported as a violation"


@pytest.mark.parametrize("tensors", [
    [{"tensor": "a", "sqnr_db": "abc"}], [{"tensor": "a", "sqnr_db": [1]}], ["not a table"], [{"order": "x"}],
    [{"tensor": "a", "order": 1}, {"tensor": "b", "order": "2"}], [{"tensor": "a", "sqnr_db": True}],
])
def test_an_analysis_with_wrong_types_is_one_gate_error(tensors, tmp_path):
    import json

    from fwedge.errors import GateError
    from fwedge.report import load_analysis

    path = tmp_path / "analysis.json"
    path.write_text(json.dumps({"tensors": tensors, "first_jump": None}))
    with pytest.raises(GateError, match="analysis") as caught:
        load_analysis(path)
    assert "\n" not in str(caught.value)


def test_an_analysis_first_jump_that_is_not_a_table_is_refused(tmp_path):
    import json

    from fwedge.errors import GateError
    from fwedge.report import load_analysis

    path = tmp_path / "analysis.json"
    path.write_text(json.dumps({"tensors": [], "first_jump": "conv1"}))
    with pytest.raises(GateError, match="first_jump"):
        load_analysis(path)


def test_analysis_fuzz_gives_a_gate_error_or_a_page_of_our_own_markup(tmp_path):
    """Seeded mutations of an analysis file: every one is refused with a GateError or renders
    to a page holding only the report's own elements and attributes."""
    import json
    import random

    from fwedge.errors import GateError
    from fwedge.report import load_analysis

    rng = random.Random(0)
    values = [None, True, 0, -1, 1e308, float("inf"), float("nan"), "inf", "", PAYLOADS[0], PAYLOADS[6], [], {},
              [PAYLOADS[1]], {"tensor": PAYLOADS[2]}, "x" * 5000, 2**70]
    results, _, verdict = hostile_inputs()
    tried = refused = rendered = 0
    for _ in range(300):
        analysis = {"samples": 8, "first_jump": {"tensor": "t0", "op": "Conv"},
                    "tensors": [{"tensor": f"t{i}", "op": "Conv", "order": i, "sqnr_db": 20.0 + i, "cosine": 0.9}
                                for i in range(3)]}
        for _ in range(rng.randint(1, 4)):
            target = rng.choice(["top", "tensor", "jump"])
            if target == "top":
                analysis[rng.choice(["samples", "first_jump", "tensors", "notes"])] = rng.choice(values)
            elif target == "jump" and isinstance(analysis.get("first_jump"), dict):
                analysis["first_jump"][rng.choice(["tensor", "op"])] = rng.choice(values)
            elif isinstance(analysis.get("tensors"), list) and analysis["tensors"]:
                entry = rng.choice(analysis["tensors"])
                if isinstance(entry, dict):
                    entry[rng.choice(["tensor", "op", "order", "sqnr_db", "cosine", "node"])] = rng.choice(values)
        path = tmp_path / "analysis.json"
        path.write_text(json.dumps(analysis))
        tried += 1
        try:
            loaded = load_analysis(path)
        except GateError:
            refused += 1
            continue
        parser = _Elements()
        parser.feed(render_html(results, loaded, verdict))
        assert {tag for tag, _ in parser.tags} <= OWN_TAGS
        assert all(set(attributes) <= OWN_ATTRIBUTES for _, attributes in parser.tags)
        rendered += 1
    assert refused and rendered and tried == refused + rendered
    print(f"analysis fuzz: {tried} tried, {refused} GateError, {rendered} rendered, 0 other exceptions")
