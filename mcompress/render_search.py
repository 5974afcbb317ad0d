"""Rows of a budget search (presets with `search:`, `mcompress tune`) for Markdown and HTML:
every trial, and which of them form the size-vs-fidelity front."""

from __future__ import annotations

from typing import Any

from mcompress.render_terminal import human_bytes

HEADER = ["trial", "size", "gate figures", "within budget", "on the front", "seconds"]


def search_rows(data: dict[str, Any]) -> list[list[str]]:
    """One row per trial, in the order tried."""
    search = data.get("search") or {}
    front = {row["label"] for row in search.get("front", [])}
    rows = []
    for trial in search.get("trials", []):
        figures = ", ".join(
            f"{name} {value:.4g}"
            for name, value in trial.get("figures", {}).items()
            if isinstance(value, (int, float))
        )
        if not trial.get("ran", True):
            rows.append([trial["label"], "not run: time budget spent", "-", "no", "", "-"])
            continue
        rows.append(
            [
                trial["label"],
                human_bytes(trial["size_bytes"]),
                figures or "-",
                "yes" if trial["passed"] else "no",
                "yes" if trial["label"] in front else "",
                f"{trial.get('seconds', 0.0):.1f}",
            ]
        )
    return rows


def chosen_line(data: dict[str, Any]) -> str:
    """'Chosen: sparsity 0.35 (of 6 trials).'"""
    search = data.get("search") or {}
    chosen = (search.get("chosen") or {}).get("label", "-")
    return f"Chosen: {chosen} (of {len(search.get('trials', []))} trials)."
