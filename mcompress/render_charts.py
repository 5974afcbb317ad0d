"""Numbers for people and the inline SVG charts of the HTML report (sizes, per-tensor bytes
and errors, sensitivity curves): plain SVG, no scripts."""

from __future__ import annotations

import html
import math
from collections.abc import Iterator, Sequence
from typing import Any

from mcompress.render_terminal import human_bytes

MAX_BARS = 15
_BEFORE = "#9aa5b1"
_AFTER = "#2563eb"
_BAD = "#dc2626"
_PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777",
            "#65a30d", "#475569", "#ea580c", "#0d9488", "#9333ea")  # fmt: skip


# ---------------------------------------------------------------- numbers


def num(value: Any, digits: int = 4) -> str:
    """A number for people: None -> '-', inf -> '∞', floats to `digits` significant digits."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return {"inf": "∞", "-inf": "-∞", "nan": "NaN"}.get(value, value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        text = f"{value:.{digits}g}"
        # Never round a near-perfect figure to a perfect one: cosine 0.99996 is not "1".
        while float(text) != value and float(text) in (1.0, -1.0, 0.0) and digits < 12:
            digits += 1
            text = f"{value:.{digits}g}"
        return text
    return str(value)


def pct(value: Any) -> str:
    return f"{value:.2%}" if isinstance(value, (int, float)) else num(value)


def ms(value: Any) -> str:
    return f"{value:.3f} ms" if isinstance(value, (int, float)) else "-"


def as_float(value: Any) -> float | None:
    """A finite float from a report value (JSON keeps inf/nan as strings), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


# ---------------------------------------------------------------- SVG charts


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _short(text: str, limit: int = 34) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


_TEXT_STYLE = {"title": (13, "600", "#111827"), "label": (11, "400", "#334155"),
               "value": (10, "400", "#475569")}  # fmt: skip


def _text(x: float, y: float, text: str, kind: str = "label", anchor: str = "start",
          tooltip: str | None = None, extra: str = "") -> str:  # fmt: skip
    """An SVG <text> styled by attributes, so a chart looks right even outside our page."""
    size, weight, color = _TEXT_STYLE[kind]
    tip = f"<title>{esc(tooltip)}</title>" if tooltip else ""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" font-weight="{weight}" '
        f'fill="{color}" text-anchor="{anchor}"{extra}>{tip}{esc(text)}</text>'
    )


def _svg_open(chart_id: str, title: str, width: float, height: float) -> str:
    return (
        f'<svg class="chart" data-chart="{esc(chart_id)}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" font-family="system-ui, sans-serif"><title>{esc(title)}</title>'
        + _text(8, 18, title, "title")
    )


def bar_chart_svg(
    title: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float], str]],
    fmt: Any = num,
    chart_id: str = "chart",
) -> str:
    """Horizontal grouped bars: one group per label, one bar per series (name, values, color)."""
    bar_h, gap, label_w, plot_w, value_w, top = 12, 10, 250, 420, 90, 48
    group_h = bar_h * len(series) + gap
    height = top + group_h * len(labels) + 10
    peak = max((v for _, vals, _ in series for v in vals if v > 0), default=1.0)
    parts = [_svg_open(chart_id, title, label_w + plot_w + value_w, height)]
    x = label_w
    for name, _, color in series:
        parts.append(f'<rect x="{x}" y="28" width="10" height="10" fill="{color}"/>')
        parts.append(_text(x + 14, 37, name))
        x += 20 + 7 * len(name)
    for i, label in enumerate(labels):
        y0 = top + i * group_h
        parts.append(
            _text(
                label_w - 6,
                y0 + bar_h * len(series) / 2 + 4,
                _short(label),
                anchor="end",
                tooltip=label,
            )  # fmt: skip
        )
        for j, (name, values, color) in enumerate(series):
            value = values[i]
            w = max(plot_w * max(value, 0) / peak, 1)
            y = y0 + j * bar_h
            parts.append(
                f'<rect class="bar" x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" '
                f'fill="{color}"><title>{esc(label)} {esc(name)}: {esc(fmt(value))}</title>'
                "</rect>"
            )
            parts.append(_text(label_w + w + 4, y + bar_h - 3, fmt(value), "value"))
    parts.append("</svg>")
    return "".join(parts)


def sensitivity_svg(
    rows: Sequence[dict[str, Any]], title: str = "Sensitivity", metric: str = "metric"
) -> str:
    """Line chart of `metric` against compression level, one line per layer.

    `rows` are {layer, level, metric}; the MAX_BARS layers whose metric moves most are drawn.
    Returns "" when no row has numbers.
    """
    by_layer: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        level, value = as_float(row.get("level")), as_float(row.get("metric"))
        if level is not None and value is not None:
            by_layer.setdefault(str(row.get("layer")), []).append((level, value))
    if not by_layer:
        return ""

    def spread(points: list[tuple[float, float]]) -> float:
        values = [m for _, m in points]
        return max(values) - min(values)

    layers = sorted(by_layer, key=lambda k: spread(by_layer[k]), reverse=True)[:MAX_BARS]
    points = [p for k in layers for p in by_layer[k]]
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    y_lo, y_hi = min(p[1] for p in points), max(p[1] for p in points)
    x_hi, y_hi = (x_hi if x_hi > x_lo else x_lo + 1), (y_hi if y_hi > y_lo else y_lo + 1)
    left, top, plot_w, plot_h, legend_w = 70, 34, 460, 240, 260
    width, height = left + plot_w + legend_w, top + plot_h + 40

    def sx(x: float) -> float:
        return left + plot_w * (x - x_lo) / (x_hi - x_lo)

    def sy(y: float) -> float:
        return top + plot_h * (1 - (y - y_lo) / (y_hi - y_lo))

    bottom = top + plot_h
    parts = [
        _svg_open("sensitivity", title, width, height),
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#cbd5e1"/>',
        _text(left - 4, top + 8, num(y_hi, 3), "value", "end"),
        _text(left - 4, bottom, num(y_lo, 3), "value", "end"),
        _text(left, bottom + 14, num(x_lo, 3), "value"),
        _text(left + plot_w, bottom + 14, num(x_hi, 3), "value", "end"),
        _text(left + plot_w / 2, bottom + 30, "level", anchor="middle"),
        _text(
            16,
            top + plot_h / 2,
            metric,
            anchor="middle",
            extra=f' transform="rotate(-90 16 {top + plot_h / 2:.1f})"',
        ),  # fmt: skip
    ]
    for i, layer in enumerate(layers):
        color = _PALETTE[i % len(_PALETTE)]
        pts = sorted(by_layer[layer])
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(
            f'<polyline class="line" points="{path}" fill="none" stroke="{color}" '
            f'stroke-width="2"><title>{esc(layer)}</title></polyline>'
        )
        parts.extend(
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}">'
            f"<title>{esc(layer)} @ {num(x)}: {num(y)}</title></circle>"
            for x, y in pts
        )
        ly = top + 12 + 16 * i
        parts.append(
            f'<rect x="{left + plot_w + 12}" y="{ly - 9}" width="10" height="10" fill="{color}"/>'
        )
        parts.append(_text(left + plot_w + 26, ly, _short(layer, 32), tooltip=layer))
    parts.append("</svg>")
    return "".join(parts)


def _dict_lists(value: Any) -> Iterator[list[dict[str, Any]]]:
    """Every list of dicts nested anywhere in `value` (pass stats vary in shape)."""
    if isinstance(value, dict):
        for v in value.values():
            yield from _dict_lists(v)
    elif isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            yield value
        for v in value:
            yield from _dict_lists(v)


def tensor_bytes(data: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(name, bytes before, bytes after) of the largest tensors, from packing and pass stats.

    A tensor changed by several steps keeps its first 'before' and its last 'after'.
    """
    found: dict[str, list[float]] = {}
    sources = [*(r.get("stats", {}) for r in data.get("passes", [])), data.get("packing", {})]
    for source in sources:
        for rows in _dict_lists(source):
            for row in rows:
                before, after = (
                    as_float(row.get("bytes_before")),
                    as_float(row.get("bytes_after")),
                )
                if "name" not in row or before is None or after is None:
                    continue
                if row["name"] in found:
                    found[row["name"]][1] = after
                else:
                    found[row["name"]] = [before, after]
    ranked = sorted(found.items(), key=lambda kv: kv[1][0], reverse=True)[:MAX_BARS]
    return [(name, b, a) for name, (b, a) in ranked]


def tensor_errors(data: dict[str, Any]) -> tuple[str, list[tuple[str, float]]]:
    """The per-tensor error the passes recorded: SQNR (dB, worst first) or else MSE."""
    for key, worst_first in (("sqnr_db", False), ("mse", True)):
        values: dict[str, float] = {}
        for record in data.get("passes", []):
            for rows in _dict_lists(record.get("stats", {})):
                for row in rows:
                    value = as_float(row.get(key))
                    if "name" in row and value is not None:
                        values[str(row["name"])] = value
        if values:
            ranked = sorted(values.items(), key=lambda kv: kv[1], reverse=worst_first)
            return key, ranked[:MAX_BARS]
    return "", []


def charts(data: dict[str, Any]) -> list[str]:
    charts = []
    out = data.get("output") or {}
    if out:
        inp = data["input"]
        charts.append(
            bar_chart_svg(
                "Model size",
                ["size on disk", "gzip size"],
                [
                    ("input", [inp["size_bytes"], inp["gzip_bytes"]], _BEFORE),
                    ("output", [out["size_bytes"], out["gzip_bytes"]], _AFTER),
                ],
                fmt=human_bytes,
                chart_id="model-size",
            )
        )
    sized = tensor_bytes(data)
    if sized:
        charts.append(
            bar_chart_svg(
                f"Largest tensors: bytes before and after (top {len(sized)})",
                [n for n, _, _ in sized],
                [
                    ("before", [b for _, b, _ in sized], _BEFORE),
                    ("after", [a for _, _, a in sized], _AFTER),
                ],  # fmt: skip
                fmt=human_bytes,
                chart_id="tensor-bytes",
            )
        )
    key, errors = tensor_errors(data)
    if errors:
        label = "SQNR dB, lowest first" if key == "sqnr_db" else "MSE, largest first"
        charts.append(
            bar_chart_svg(
                f"Per-tensor error ({label})",
                [n for n, _ in errors],
                [(key, [v for _, v in errors], _BAD)],
                chart_id="tensor-error",
            )
        )
    return charts
