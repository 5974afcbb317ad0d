"""A RunReport as Markdown (PR comments, GitHub step summaries) or as one self-contained HTML
page: inline CSS and inline SVG charts, no scripts and no network requests (a CSP forbids them).

Both work from the report's JSON form, so a report read back from a file renders the same.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mcompress import render_search
from mcompress.render_terminal import gzip_text, human_bytes
from mcompress.report import FLOOR_GATES, RunReport

MAX_BARS = 15
_BEFORE = "#9aa5b1"
_AFTER = "#2563eb"
_BAD = "#dc2626"
_PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777",
            "#65a30d", "#475569", "#ea580c", "#0d9488", "#9333ea")  # fmt: skip


def _data(report: RunReport | dict[str, Any]) -> dict[str, Any]:
    return report.to_dict() if isinstance(report, RunReport) else report


# ---------------------------------------------------------------- numbers


def _num(value: Any, digits: int = 4) -> str:
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


def _pct(value: Any) -> str:
    return f"{value:.2%}" if isinstance(value, (int, float)) else _num(value)


def _ms(value: Any) -> str:
    return f"{value:.3f} ms" if isinstance(value, (int, float)) else "-"


def _as_float(value: Any) -> float | None:
    """A finite float from a report value (JSON keeps inf/nan as strings), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


# ---------------------------------------------------------------- shared content


def _status(data: dict[str, Any]) -> str:
    """PASSED, BROKEN (below the fidelity floor) or FAILED (another gate)."""
    if data.get("passed", True):
        return "PASSED"
    failed = {g["name"] for g in data.get("gates", []) if not g["passed"]}
    return "BROKEN" if failed & set(FLOOR_GATES) else "FAILED"


def _size_rows(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    inp, out = data["input"], data.get("output") or {}
    rows = [
        ("file", Path(inp["path"]).name, Path(out["path"]).name if out else "-"),
        ("size on disk", human_bytes(inp["size_bytes"]), human_bytes(out.get("size_bytes"))),
        (
            "gzip size",
            gzip_text(inp["gzip_bytes"], inp.get("gzip_estimated")),
            gzip_text(out.get("gzip_bytes"), out.get("gzip_estimated")),
        ),
        ("parameters", _num(inp["parameters"]), _num(out.get("parameters"))),
    ]
    ratio = _as_float(data.get("compression_ratio"))
    if ratio:
        rows.append(("compression ratio", "", f"{ratio:.2f}x ({100 / ratio:.1f}% of input)"))
    return rows


def _gate_rows(data: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for gate in data.get("gates", []):
        value, threshold = _as_float(gate.get("value")), gate["threshold"]
        if value is None:
            margin = "not measured"
        elif gate["name"].startswith("max_"):
            margin = f"{threshold - value:+.4g}"
        else:
            margin = f"{value - threshold:+.4g}"
        result = "pass" if gate["passed"] else "FAIL"
        rows.append((gate["name"], _num(threshold), _num(gate.get("value")), margin, result))
    return rows


_OUTPUT_COLUMNS = (
    ("max abs error", "max_abs_error"),
    ("mean abs error", "mean_abs_error"),
    ("cosine", "cosine"),
    ("SQNR dB", "sqnr_db"),
    ("NaN/inf", None),
    ("top-1 agreement", "top1_agreement"),
    ("top-1 (confident)", "top1_agreement_confident"),
)


def _output_rows(validation: dict[str, Any]) -> list[list[str]]:
    rows = []
    items = [*validation.get("outputs", {}).items(), ("overall (worst)", validation["overall"])]
    for name, m in items:
        row = [name]
        for _, key in _OUTPUT_COLUMNS:
            if key is None:
                row.append(f"{m.get('nan_count', 0)}/{m.get('inf_count', 0)}")
            elif key.startswith("top1"):
                row.append(_pct(m.get(key)) if m.get(key) is not None else "-")
            else:
                row.append(_num(m.get(key)))
        rows.append(row)
    return rows


def _task_rows(task: dict[str, Any]) -> list[list[str]]:
    return [
        [model, *(_pct(task[model][k]) for k in ("accuracy", "precision", "recall", "f1"))]
        for model in ("original", "compressed")
    ]


def _inputs_line(validation: dict[str, Any]) -> str:
    desc = validation.get("inputs") or {}
    count = validation.get("samples", "?")
    if desc.get("source") == "data":
        return f"{count} samples from `{desc.get('path')}`" + (
            " (with labels)" if desc.get("labels") else ""
        )
    shapes = ", ".join(
        f"{n} {'x'.join(map(str, i.get('shape', []))) or 'scalar'} ({i.get('fill')})"
        for n, i in desc.get("inputs", {}).items()
    )
    guessed = "; ".join(
        f"{n}: {'x'.join(map(str, dims))}" for n, dims in (desc.get("guessed") or {}).items()
    )
    note = f" (guessed dynamic sizes {guessed}; pin with --input-shape)" if guessed else ""
    return f"{count} RANDOM samples, seed {desc.get('seed')}: {shapes}{note}"


def _pass_rows(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    for record in data.get("passes", []):
        facts = [
            f"{k}={_num(v)}"
            for k, v in record.get("stats", {}).items()
            if isinstance(v, (int, float, str, bool))
        ]
        rows.append(
            [
                record["type"],
                f"{record['seconds']:.2f}s",
                "yes" if record.get("modified") else "no",
                ", ".join(facts[:8]),
            ]
        )
    return rows


def _notes(data: dict[str, Any]) -> list[str]:
    validation = data.get("validation") or {}
    return [*data.get("notes", []), *validation.get("notes", [])]


# ---------------------------------------------------------------- Markdown


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines.extend("| " + " | ".join(cell(c) for c in row) + " |" for row in rows)
    return [*lines, ""]


def to_markdown(report: RunReport | dict[str, Any]) -> str:
    """The report as GitHub-flavoured Markdown: sizes, gates, per-output metrics, passes."""
    data = _data(report)
    lines = [f"## mcompress {data['command']}: {_status(data)}", ""]
    lines += _md_table(["", "input", "output"], _size_rows(data))
    if data.get("gates"):
        lines += ["### Gates", ""]
        lines += _md_table(["gate", "threshold", "value", "margin", "result"], _gate_rows(data))
    validation = data.get("validation")
    if validation:
        lines += ["### Validation", "", _inputs_line(validation), ""]
        lines += _md_table(["output", *(c for c, _ in _OUTPUT_COLUMNS)], _output_rows(validation))
        task = validation.get("task")
        if task:
            lines += [
                f"Task metrics on `{task['output']}` ({task['samples']} labelled samples; "
                f"accuracy drop {_pct(task['accuracy_drop'])}):",
                "",
            ]
            lines += _md_table(["model", "accuracy", "precision", "recall", "F1"], _task_rows(task))
        latency = _latency(validation)
        if latency:
            lines += [f"{latency[0]}:", "", *_md_table(_LATENCY_HEADER, latency[1])]
    elif data.get("output"):
        lines += ["Validation was skipped.", ""]
    if data.get("search"):
        lines += ["### Search", "", render_search.chosen_line(data), ""]
        lines += _md_table(render_search.HEADER, render_search.search_rows(data))
    if data.get("passes"):
        lines += ["### Passes", ""]
        lines += _md_table(["pass", "time", "changed", "stats"], _pass_rows(data))
    notes = _notes(data)
    if notes:
        lines += ["### Notes", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(lines)


def _latency(validation: dict[str, Any]) -> tuple[str, list[list[str]]] | None:
    """A caption and rows (model, median, p90, peak memory) for the latency table."""
    latency, memory = validation.get("latency"), validation.get("memory") or {}
    if not latency:
        return None
    rows = [
        [
            model,
            _ms(latency[model]["median_ms"]),
            _ms(latency[model]["p90_ms"]),
            human_bytes(memory.get(f"{model}_peak_bytes")),
        ]
        for model in ("original", "compressed")
    ]
    batch = latency.get("data_batch")
    if batch:
        size = next(iter(batch["input_shapes"].values()))[0]
        rows += [
            [f"{model} (batch {size})", _ms(batch[model]["median_ms"]),
             _ms(batch[model]["p90_ms"]), ""]
            for model in ("original", "compressed")
        ]  # fmt: skip
    ratio = _as_float(latency.get("ratio"))
    caption = f"Latency over {latency['runs']} runs at batch 1"
    caption += f"; compressed/original {ratio:.2f}x" if ratio else ""
    return caption, rows


_LATENCY_HEADER = ["model", "median", "p90", "peak memory"]


# ---------------------------------------------------------------- SVG charts


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _inline(text: Any) -> str:
    """Escaped text with Markdown's `code` spans (shared with the Markdown report) as <code>."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", _esc(text))


def _short(text: str, limit: int = 34) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


_TEXT_STYLE = {"title": (13, "600", "#111827"), "label": (11, "400", "#334155"),
               "value": (10, "400", "#475569")}  # fmt: skip


def _text(x: float, y: float, text: str, kind: str = "label", anchor: str = "start",
          tooltip: str | None = None, extra: str = "") -> str:  # fmt: skip
    """An SVG <text> styled by attributes, so a chart looks right even outside our page."""
    size, weight, color = _TEXT_STYLE[kind]
    tip = f"<title>{_esc(tooltip)}</title>" if tooltip else ""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" font-weight="{weight}" '
        f'fill="{color}" text-anchor="{anchor}"{extra}>{tip}{_esc(text)}</text>'
    )


def _svg_open(chart_id: str, title: str, width: float, height: float) -> str:
    return (
        f'<svg class="chart" data-chart="{_esc(chart_id)}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" font-family="system-ui, sans-serif"><title>{_esc(title)}</title>'
        + _text(8, 18, title, "title")
    )


def bar_chart_svg(
    title: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float], str]],
    fmt: Any = _num,
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
                f'fill="{color}"><title>{_esc(label)} {_esc(name)}: {_esc(fmt(value))}</title>'
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
        level, value = _as_float(row.get("level")), _as_float(row.get("metric"))
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
        _text(left - 4, top + 8, _num(y_hi, 3), "value", "end"),
        _text(left - 4, bottom, _num(y_lo, 3), "value", "end"),
        _text(left, bottom + 14, _num(x_lo, 3), "value"),
        _text(left + plot_w, bottom + 14, _num(x_hi, 3), "value", "end"),
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
            f'stroke-width="2"><title>{_esc(layer)}</title></polyline>'
        )
        parts.extend(
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}">'
            f"<title>{_esc(layer)} @ {_num(x)}: {_num(y)}</title></circle>"
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
                    _as_float(row.get("bytes_before")),
                    _as_float(row.get("bytes_after")),
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
                    value = _as_float(row.get(key))
                    if "name" in row and value is not None:
                        values[str(row["name"])] = value
        if values:
            ranked = sorted(values.items(), key=lambda kv: kv[1], reverse=worst_first)
            return key, ranked[:MAX_BARS]
    return "", []


def _charts(data: dict[str, Any]) -> list[str]:
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


# ---------------------------------------------------------------- HTML

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#1f2937;
margin:0;background:#f8fafc}
main{max-width:1000px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;color:#fff;font-weight:600;
font-size:13px;vertical-align:middle}
.pass{background:#16a34a}.fail{background:#dc2626}
table{border-collapse:collapse;background:#fff;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #e2e8f0;padding:4px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f1f5f9}
tr.bad td{background:#fef2f2;color:#991b1b}.passes td:last-child{text-align:left}
.muted{color:#64748b}.chart{display:block;background:#fff;border:1px solid #e2e8f0;
margin:8px 0;max-width:100%;height:auto}
code{background:#eef2f7;padding:0 4px;border-radius:3px}
"""


def _html_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], bad: Sequence[bool] = (), cls: str = ""
) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        f"<tr{' class=bad' if i < len(bad) and bad[i] else ''}>"
        + "".join(f"<td>{_esc(c)}</td>" for c in row)
        + "</tr>"
        for i, row in enumerate(rows)
    )
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(report: RunReport | dict[str, Any]) -> str:
    """One self-contained HTML page: summary, gates, per-output metrics, charts, passes."""
    data = _data(report)
    status = _status(data)
    name = Path(data["input"]["path"]).name
    body = [
        f"<h1>mcompress {_esc(data['command'])}: {_esc(name)} "
        f'<span class="badge {"pass" if status == "PASSED" else "fail"}">{status}</span></h1>',
        f'<p class="muted">mcompress {_esc(data.get("mcompress_version", ""))} · report schema '
        f"{_esc(data.get('schema_version', ''))} · {_num(data.get('seconds', 0.0), 3)} s</p>",
        "<h2>Summary</h2>",
        _html_table(["", "input", "output"], _size_rows(data)),
    ]
    if data.get("gates"):
        rows = _gate_rows(data)
        body += [
            "<h2>Gates</h2>",
            _html_table(
                ["gate", "threshold", "value", "margin", "result"],
                rows,
                [r[-1] == "FAIL" for r in rows],
            ),
        ]
    validation = data.get("validation")
    if validation:
        body += ["<h2>Validation</h2>", f"<p>{_inline(_inputs_line(validation))}</p>"]
        body.append(_html_table(["output", *(c for c, _ in _OUTPUT_COLUMNS)],
                                _output_rows(validation)))  # fmt: skip
        task = validation.get("task")
        if task:
            body.append(
                f"<p>Task metrics on <code>{_esc(task['output'])}</code> ({task['samples']} "
                f"labelled samples; accuracy drop {_esc(_pct(task['accuracy_drop']))})</p>"
            )
            body.append(
                _html_table(["model", "accuracy", "precision", "recall", "F1"], _task_rows(task))
            )
        latency = _latency(validation)
        if latency:
            body += [f"<p>{_inline(latency[0])}</p>", _html_table(_LATENCY_HEADER, latency[1])]
    elif data.get("output"):
        body.append("<p>Validation was skipped.</p>")
    charts = _charts(data)
    if charts:
        body += ["<h2>Charts</h2>", *charts]
    if data.get("search"):
        body += ["<h2>Search</h2>", f"<p>{_esc(render_search.chosen_line(data))}</p>",
                 _html_table(render_search.HEADER, render_search.search_rows(data))]  # fmt: skip
    if data.get("passes"):
        body += [
            "<h2>Passes</h2>",
            _html_table(["pass", "time", "changed", "stats"], _pass_rows(data), cls="passes"),
        ]
    notes = _notes(data)
    if notes:
        body += ["<h2>Notes</h2>", "<ul>", *(f"<li>{_inline(n)}</li>" for n in notes), "</ul>"]
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'\">"
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>mcompress {_esc(data['command'])}: {_esc(name)} ({status})</title>"
        f"<style>{_CSS}</style></head><body><main>" + "\n".join(body) + "</main></body></html>\n"
    )
