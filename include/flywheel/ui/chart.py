"""The metric-over-versions chart, drawn as inline SVG on the server.

No charting library and no CDN: the page must work where the API server has no internet access and
under a strict Content-Security-Policy. Every value written into the markup is a number or escaped.
"""

from __future__ import annotations

from html import escape
from typing import Any

WIDTH, HEIGHT = 640, 220
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 56, 16, 16, 36
COLOURS = {"promoted": "#2f855a", "rejected": "#c53030", "candidate": "#718096"}


def metric_chart(points: list[dict[str, Any]], metric: str) -> str:
    """An SVG line chart of ``metric`` per version; empty string when there is nothing to draw."""
    if not points:
        return ""
    values = [p["value"] for p in points]
    low, high = min(values), max(values)
    span = high - low or max(abs(high) * 0.05, 0.01)
    low, high = low - span * 0.1, high + span * 0.1
    inner_w, inner_h = WIDTH - PAD_LEFT - PAD_RIGHT, HEIGHT - PAD_TOP - PAD_BOTTOM

    def x(i: int) -> float:
        return PAD_LEFT + (inner_w / 2 if len(points) == 1 else inner_w * i / (len(points) - 1))

    def y(v: float) -> float:
        return PAD_TOP + inner_h * (1 - (v - low) / (high - low))

    parts = [f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
             f'aria-label="{escape(metric)} by version">',
             f'<title>{escape(metric)} by version</title>']
    for frac in (0.0, 0.5, 1.0):
        v = low + (high - low) * frac
        parts.append(f'<line x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>'
                     f'<text x="{PAD_LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.4f}</text>')
    path = " ".join(f"{x(i):.1f},{y(p['value']):.1f}" for i, p in enumerate(points))
    parts.append(f'<polyline points="{path}" class="line"/>')
    for i, p in enumerate(points):
        colour = COLOURS.get(p["status"], COLOURS["candidate"])
        radius = 7 if p.get("champion") else 4.5
        label = f"v{int(p['version'])}: {metric} {p['value']:.4f} ({escape(str(p['status']))})"
        parts.append(f'<circle cx="{x(i):.1f}" cy="{y(p["value"]):.1f}" r="{radius}" fill="{colour}" '
                     f'class="point{" champion" if p.get("champion") else ""}"><title>{label}</title></circle>'
                     f'<text x="{x(i):.1f}" y="{HEIGHT - 12}" text-anchor="middle">v{int(p["version"])}</text>')
    parts.append("</svg>")
    return "".join(parts)
