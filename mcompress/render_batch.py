"""A batch summary (summary.json) for people: the cell texts its tables share, and Markdown
for GitHub's job summary page."""

from __future__ import annotations

import os
from typing import Any

from mcompress.render import md_table
from mcompress.render_terminal import human_bytes

COLUMNS = ("model", "input", "output", "ratio", "key metric", "gates", "status", "seconds")


def ratio_text(value: Any) -> str:
    return f"{value:.2f}x" if isinstance(value, (int, float)) else "-"


def metric_text(metric: dict[str, Any] | None) -> str:
    if not metric:
        return "-"
    value = metric["value"]
    shown = f"{value:.4g}" if isinstance(value, (int, float)) else str(value)
    return f"{metric['name']} {shown}"


def gates_text(gates: list[dict[str, Any]]) -> str:
    failed = [g["name"] for g in gates if not g["passed"]]
    return "-" if not gates else ("pass" if not failed else "FAIL " + ", ".join(failed))


def status_text(row: dict[str, Any]) -> str:
    return row["status"] if not row.get("error") else f"{row['status']} (exit {row['exit_code']})"


def cells(row: dict[str, Any]) -> list[str]:
    """One summary row as the texts of COLUMNS."""
    return [
        row["name"],
        human_bytes(row["input_bytes"]),
        human_bytes(row["output_bytes"]),
        ratio_text(row["ratio"]),
        metric_text(row["metric"]),
        gates_text(row["gates"]),
        status_text(row),
        f"{row['seconds']:.1f}",
    ]


def to_markdown(summary: dict[str, Any]) -> str:
    """The summary as a heading with the counts and exit code, then one table row per model."""
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary["counts"].items()))
    lines = [
        f"## mcompress batch ({summary['config']}): {len(summary['models'])} model(s), "
        f"{counts or 'none'}, exit {summary['exit_code']}",
        "",
    ]
    lines += md_table(COLUMNS, [cells(row) for row in summary["models"]])
    return "\n".join(lines)


def append_to_step_summary(summary: dict[str, Any]) -> None:
    """Append the Markdown summary to $GITHUB_STEP_SUMMARY when set (GitHub Actions' job page),
    as the single-model commands do."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(to_markdown(summary) + "\n")
