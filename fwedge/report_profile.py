"""The HTML report's per-layer profile: one inline SVG bar chart per bundle of `fwedge profile --json`."""
from __future__ import annotations

import html

from fwedge.profile import BundleProfile


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _ratio(value: float | None) -> str:
    return "?" if value is None else f"{100 * value:.1f}%"


def profile_chart(profile: BundleProfile, width: int = 760) -> str:
    """Inline SVG: one horizontal bar per layer (execution order), length = mean time per run.

    Every name comes from a file a stranger may have written: all text is escaped, and nothing
    from the file becomes an attribute other than as escaped text.
    """
    label_width, bar_height, gap = 400, 14, 3
    plot = width - label_width - 130
    longest = max((layer.time_ms for layer in profile.layers), default=0.0) or 1.0
    height = len(profile.layers) * (bar_height + gap) + 8
    parts = [f"<svg class='profile-chart' role='img' aria-label='Per-layer time' width='{width}' height='{height}' "
             f"viewBox='0 0 {width} {height}'>"]
    for index, layer in enumerate(profile.layers):
        y = index * (bar_height + gap)
        length = max(1.0, plot * layer.time_ms / longest)
        label = layer.name if len(layer.name) <= 40 else "…" + layer.name[-39:]
        kind = layer.kind if len(layer.kind) <= 20 else layer.kind[:19] + "…"
        macs = "" if layer.macs is None else f", {layer.macs:,} MACs"
        parts.append(
            f"<g class='bar'><title>{_e(layer.name)} ({_e(layer.kind)}{macs}): {layer.time_ms:.4f} ms, "
            f"{layer.percent:.1f}%</title>"
            f"<text x='{label_width - 6}' y='{y + 11}' text-anchor='end'>{_e(label)} ({_e(kind)})</text>"
            f"<rect x='{label_width}' y='{y}' width='{length:.1f}' height='{bar_height}' fill='#0969da'/>"
            f"<text x='{label_width + length + 4:.1f}' y='{y + 11}'>{layer.time_ms:.4f} ms · {layer.percent:.1f}%</text></g>")
    parts.append("</svg>")
    return "".join(parts)


def profile_section(profiles: list[BundleProfile] | None) -> str:
    """The report's per-layer profile section, or a note that none was given."""
    if profiles is None:
        return "<p class='note'>No profile given (fwedge profile BUNDLE --json FILE, then --profile FILE).</p>"
    parts = []
    for profile in profiles:
        head = f"<h3>{_e(profile.bundle)} on {_e(profile.device)}</h3>"
        if not profile.layers:
            parts.append(f"{head}<p class='note'>{_e(profile.note)}; ordinary p50 "
                         f"{_e('?' if profile.ordinary_p50_ms is None else f'{profile.ordinary_p50_ms:.4g}')} ms.</p>")
            continue
        summary = (f"{_e(profile.method)}; {profile.runs} runs. Layer sum {profile.layer_sum_ms or 0:.4g} ms = "
                   f"{_ratio(profile.sum_over_total)} of {_e(profile.total_what)}, {_ratio(profile.sum_over_ordinary)} "
                   "of the ordinary p50"
                   + (f", {_ratio(profile.sum_over_plain)} of the same build's clock-off runs in the same process"
                      if profile.plain_ms else "")
                   + "." + (f" {_e(profile.note)}." if profile.note else ""))
        parts.append(f"{head}<p class='note'>{summary}</p>{profile_chart(profile)}")
    return "".join(parts)
