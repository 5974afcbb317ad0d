"""A RunReport as Markdown (PR comments, GitHub step summaries) or as one self-contained HTML
page: inline CSS and inline SVG charts, no scripts and no network requests (a CSP forbids them).

Both work from the report's JSON form, so a report read back from a file renders the same.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mcompress import render_search
from mcompress.render_charts import as_float, charts, esc, ms, num, pct
from mcompress.render_terminal import gzip_text, human_bytes
from mcompress.report import FLOOR_GATES, RunReport


def _data(report: RunReport | dict[str, Any]) -> dict[str, Any]:
    return report.to_dict() if isinstance(report, RunReport) else report


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
        ("parameters", num(inp["parameters"]), num(out.get("parameters"))),
    ]
    ratio = as_float(data.get("compression_ratio"))
    if ratio:
        rows.append(("compression ratio", "", f"{ratio:.2f}x ({100 / ratio:.1f}% of input)"))
    return rows


def _gate_rows(data: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for gate in data.get("gates", []):
        value, threshold = as_float(gate.get("value")), gate["threshold"]
        if value is None:
            margin = "not measured"
        elif gate["name"].startswith("max_"):
            margin = f"{threshold - value:+.4g}"
        else:
            margin = f"{value - threshold:+.4g}"
        result = "pass" if gate["passed"] else "FAIL"
        rows.append((gate["name"], num(threshold), num(gate.get("value")), margin, result))
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
                row.append(pct(m.get(key)) if m.get(key) is not None else "-")
            else:
                row.append(num(m.get(key)))
        rows.append(row)
    return rows


def _task_rows(task: dict[str, Any]) -> list[list[str]]:
    return [
        [model, *(pct(task[model][k]) for k in ("accuracy", "precision", "recall", "f1"))]
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
            f"{k}={num(v)}"
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


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table (lines); `|` and newlines in cells are escaped."""

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
    lines += md_table(["", "input", "output"], _size_rows(data))
    if data.get("gates"):
        lines += ["### Gates", ""]
        lines += md_table(["gate", "threshold", "value", "margin", "result"], _gate_rows(data))
    validation = data.get("validation")
    if validation:
        lines += ["### Validation", "", _inputs_line(validation), ""]
        lines += md_table(["output", *(c for c, _ in _OUTPUT_COLUMNS)], _output_rows(validation))
        task = validation.get("task")
        if task:
            lines += [
                f"Task metrics on `{task['output']}` ({task['samples']} labelled samples; "
                f"accuracy drop {pct(task['accuracy_drop'])}):",
                "",
            ]
            lines += md_table(["model", "accuracy", "precision", "recall", "F1"], _task_rows(task))
        latency = _latency(validation)
        if latency:
            lines += [f"{latency[0]}:", "", *md_table(_LATENCY_HEADER, latency[1])]
    elif data.get("output"):
        lines += ["Validation was skipped.", ""]
    if data.get("search"):
        lines += ["### Search", "", render_search.chosen_line(data), ""]
        lines += md_table(render_search.HEADER, render_search.search_rows(data))
    if data.get("passes"):
        lines += ["### Passes", ""]
        lines += md_table(["pass", "time", "changed", "stats"], _pass_rows(data))
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
            ms(latency[model]["median_ms"]),
            ms(latency[model]["p90_ms"]),
            human_bytes(memory.get(f"{model}_peak_bytes")),
        ]
        for model in ("original", "compressed")
    ]
    batch = latency.get("data_batch")
    if batch:
        size = next(iter(batch["input_shapes"].values()))[0]
        rows += [
            [f"{model} (batch {size})", ms(batch[model]["median_ms"]),
             ms(batch[model]["p90_ms"]), ""]
            for model in ("original", "compressed")
        ]  # fmt: skip
    ratio = as_float(latency.get("ratio"))
    caption = f"Latency over {latency['runs']} runs at batch 1"
    caption += f"; compressed/original {ratio:.2f}x" if ratio else ""
    return caption, rows


_LATENCY_HEADER = ["model", "median", "p90", "peak memory"]


def _inline(text: Any) -> str:
    """Escaped text with Markdown's `code` spans (shared with the Markdown report) as <code>."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", esc(text))


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
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        f"<tr{' class=bad' if i < len(bad) and bad[i] else ''}>"
        + "".join(f"<td>{esc(c)}</td>" for c in row)
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
        f"<h1>mcompress {esc(data['command'])}: {esc(name)} "
        f'<span class="badge {"pass" if status == "PASSED" else "fail"}">{status}</span></h1>',
        f'<p class="muted">mcompress {esc(data.get("mcompress_version", ""))} · report schema '
        f"{esc(data.get('schema_version', ''))} · {num(data.get('seconds', 0.0), 3)} s</p>",
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
                f"<p>Task metrics on <code>{esc(task['output'])}</code> ({task['samples']} "
                f"labelled samples; accuracy drop {esc(pct(task['accuracy_drop']))})</p>"
            )
            body.append(
                _html_table(["model", "accuracy", "precision", "recall", "F1"], _task_rows(task))
            )
        latency = _latency(validation)
        if latency:
            body += [f"<p>{_inline(latency[0])}</p>", _html_table(_LATENCY_HEADER, latency[1])]
    elif data.get("output"):
        body.append("<p>Validation was skipped.</p>")
    svgs = charts(data)
    if svgs:
        body += ["<h2>Charts</h2>", *svgs]
    if data.get("search"):
        body += ["<h2>Search</h2>", f"<p>{esc(render_search.chosen_line(data))}</p>",
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
        f"<title>mcompress {esc(data['command'])}: {esc(name)} ({status})</title>"
        f"<style>{_CSS}</style></head><body><main>" + "\n".join(body) + "</main></body></html>\n"
    )
