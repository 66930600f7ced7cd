"""Charts as inline SVG built on the server: no JavaScript, no third-party library.

Values are escaped by Markup; colours come from presentation attributes and the local
stylesheet (the CSP forbids inline style).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 640, 180, 56, 12, 12, 28
COLORS = ("#2f6fb3", "#d9822b", "#3a9a5b", "#b33b5e")


def _markup(parts: list[str]) -> Markup:
    # Safe: every interpolated label or value above went through escape().
    return Markup("".join(parts))  # noqa: S704


@dataclass(frozen=True)
class Scale:
    """A value axis: ``intervals`` gridlines ``step`` apart from 0 to ``top``."""

    top: float
    step: float
    intervals: int
    decimals: int  # enough to tell the ticks apart, no more

    def ticks(self) -> list[float]:
        return [self.step * i for i in range(self.intervals + 1)]


def nice_scale(vmax: float, max_intervals: int = 5) -> Scale:
    """The smallest 1/2/2.5/5 x 10^k step that covers ``vmax`` in at most ``max_intervals``,
    at any magnitude (a spend of 0.003 gets a 0-0.003 axis, not 0-1)."""
    if not vmax > 0 or not math.isfinite(vmax):
        return Scale(1.0, 0.25, 4, 2)
    exp = math.floor(math.log10(vmax))
    for k in range(exp - 1, exp + 2):
        for mantissa in (1, 2, 2.5, 5):
            step = mantissa * 10.0 ** k
            if vmax / step <= max_intervals + 1e-9:
                intervals = max(1, math.ceil(vmax / step - 1e-9))
                decimals = max(0, -k + (1 if mantissa == 2.5 else 0))
                return Scale(step * intervals, step, intervals, decimals)
    raise AssertionError("unreachable: 10^(exp+1) always covers vmax")  # pragma: no cover


def _abbrev(v: float) -> str | None:
    """Large whole numbers (requests, tokens) as 1.2k / 3.4M."""
    if abs(v) >= 1_000_000:
        return f"{v / 1_000_000:.3g}M"
    if abs(v) >= 1000:
        return f"{v / 1000:.3g}k"
    return None


def _tick(v: float, scale: Scale) -> str:
    if v == 0:
        return "0"
    if scale.decimals == 0 and (short := _abbrev(v)):
        return short
    return f"{v:.{scale.decimals}f}"


def _fmt(v: float) -> str:
    """One value: whole numbers as they are (abbreviated when large); fractions (amounts in
    the currency, rates) with at least two decimals and three significant digits, up to six
    (the wallet's micro-units), so a small cost never reads 0.00."""
    if float(v).is_integer():
        return _abbrev(v) or f"{v:.0f}"
    decimals = min(6, max(2, 2 - math.floor(math.log10(abs(v)))))
    text = f"{v:.{decimals}f}"
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0").ljust(2, "0")
    return f"{whole}.{frac}"


def _unit(unit: str) -> str:
    return unit if unit in ("", "%") else f" {unit}"


def _frame(title: str, scale: Scale, labels: Sequence[str], unit: str) -> list[str]:
    inner_h = H - PAD_T - PAD_B
    parts = [f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" '
             f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
             f"<title>{escape(title)}</title>"]
    for v in scale.ticks():
        y = PAD_T + inner_h * (1 - v / scale.top)
        parts.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#e3e6ea" stroke-width="1"/>')
        parts.append(f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end" '
                     f'font-size="11" fill="#555">{escape(_tick(v, scale))}'
                     f"{escape(_unit(unit))}</text>")
    n = len(labels)
    if n:
        for idx in sorted({0, n // 2, n - 1}):
            x = PAD_L + (W - PAD_L - PAD_R) * (idx + 0.5) / n
            parts.append(f'<text x="{x:.1f}" y="{H - 8}" text-anchor="middle" font-size="11" '
                         f'fill="#555">{escape(labels[idx])}</text>')
    return parts


def bar_chart(title: str, labels: Sequence[str], values: Sequence[float],
              unit: str = "") -> Markup:
    """Vertical bars, one per label."""
    scale = nice_scale(max(values, default=0))
    ymax = scale.top
    parts = _frame(title, scale, labels, unit)
    n = max(len(values), 1)
    slot = (W - PAD_L - PAD_R) / n
    inner_h = H - PAD_T - PAD_B
    for i, v in enumerate(values):
        h = inner_h * (v / ymax) if ymax else 0
        x = PAD_L + i * slot + slot * 0.15
        parts.append(f'<rect x="{x:.1f}" y="{PAD_T + inner_h - h:.1f}" '
                     f'width="{max(slot * 0.7, 1):.1f}" height="{h:.1f}" fill="{COLORS[0]}">'
                     f"<title>{escape(labels[i])}: {escape(_fmt(v))}{escape(_unit(unit))}</title>"
                     f"</rect>")
    parts.append("</svg>")
    return _markup(parts)


def line_chart(title: str, labels: Sequence[str],
               series: Sequence[tuple[str, Sequence[float | None]]], unit: str = "") -> Markup:
    """One polyline per named series; None values leave a gap."""
    flat = [v for _, vals in series for v in vals if v is not None]
    scale = nice_scale(max(flat, default=0))
    ymax = scale.top
    parts = _frame(title, scale, labels, unit)
    n = max(len(labels), 1)
    inner_w, inner_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    for si, (name, vals) in enumerate(series):
        color = COLORS[si % len(COLORS)]
        segment: list[str] = []
        segments: list[list[str]] = [segment]
        for i, v in enumerate(vals):
            if v is None:
                segment = []
                segments.append(segment)
                continue
            x = PAD_L + inner_w * (i + 0.5) / n
            y = PAD_T + inner_h - inner_h * (v / ymax)
            segment.append(f"{x:.1f},{y:.1f}")
        for seg in segments:
            if len(seg) == 1:
                cx, cy = seg[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{color}"/>')
            elif seg:
                parts.append(f'<polyline points="{" ".join(seg)}" fill="none" '
                             f'stroke="{color}" stroke-width="2"/>')
        parts.append(f'<text x="{PAD_L + 8 + si * 90}" y="{PAD_T + 12}" font-size="11" '
                     f'fill="{color}">{escape(name)}</text>')
    parts.append("</svg>")
    return _markup(parts)


def hbar_chart(title: str, rows: Sequence[tuple[str, float]], unit: str = "") -> Markup:
    """Horizontal bars (e.g. cost per model)."""
    row_h = 22
    height = PAD_T + row_h * max(len(rows), 1) + 8
    vmax = max((v for _, v in rows), default=0) or 1
    label_w = 150
    parts = [f'<svg class="chart" viewBox="0 0 {W} {height}" role="img" '
             f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
             f"<title>{escape(title)}</title>"]
    for i, (label, v) in enumerate(rows):
        y = PAD_T + i * row_h
        w = (W - label_w - 90) * v / vmax
        parts.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end" font-size="12" '
                     f'fill="#333">{escape(label[:24])}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" '
                     f'fill="{COLORS[1]}"/>')
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 14}" font-size="11" '
                     f'fill="#555">{escape(_fmt(v))}{escape(_unit(unit))}</text>')
    parts.append("</svg>")
    return _markup(parts)
