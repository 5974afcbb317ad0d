"""`mcompress batch-merge`: the summaries of a batch's shards (`batch --shard I/N`) as one
summary, the same as the batch run in one go would have written (timings aside)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mcompress.batch import SUMMARY_SCHEMA_VERSION, Outcome, Row
from mcompress.errors import UsageError

SHARD_SUMMARY_GLOB = "summary-*-of-*.json"


def find_shard_summaries(paths: list[Path]) -> list[Path]:
    """Shard summaries named by `paths`: files as given, folders searched recursively."""
    found: list[Path] = []
    for path in paths:
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            matches = sorted(path.rglob(SHARD_SUMMARY_GLOB))
            if not matches:
                raise UsageError(
                    f"'{path}' contains no shard summaries ({SHARD_SUMMARY_GLOB})",
                    "run batch with --shard I/N first",
                )
            found += matches
        else:
            raise UsageError(f"'{path}' is not a file or a folder")
    return found


def merge(files: list[Path]) -> tuple[Outcome, str]:
    """The whole batch's outcome and config name from its shards' summaries; every shard
    1..N must be there exactly once, all from the same batch."""
    shards = {path: _load(path) for path in files}
    first_path, first = next(iter(shards.items()))
    count, total = first["shard"]["count"], first["shard"]["models_total"]
    by_index: dict[int, Path] = {}
    for path, data in shards.items():
        shard = data["shard"]
        same = (shard["count"], shard["models_total"], data["config"])
        if same != (count, total, first["config"]):
            raise UsageError(
                f"'{path}' is not from the same batch as '{first_path}' "
                f"(shard count, number of models or config differ)"
            )
        if shard["index"] in by_index:
            raise UsageError(
                f"shard {shard['index']} of {count} is given twice: "
                f"'{by_index[shard['index']]}' and '{path}'"
            )
        by_index[shard["index"]] = path
    missing = [str(i) for i in range(1, count + 1) if i not in by_index]
    if missing:
        raise UsageError(
            f"shard {', '.join(missing)} of {count} missing: "
            f"no summary-{missing[0]}-of-{count}.json among the given paths"
        )
    rows = _rows_in_batch_order(list(shards.values()), total)
    outcome = Outcome(
        rows=rows,
        jobs=max(data["jobs"] for data in shards.values()),
        seconds=max(data["seconds"] for data in shards.values()),
        interrupted=any(data["interrupted"] for data in shards.values()),
    )
    return outcome, first["config"]


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise UsageError(f"'{path}' is not a readable batch summary (JSON)") from None
    if not isinstance(data, dict) or not isinstance(data.get("shard"), dict):
        raise UsageError(f"'{path}' is not a shard summary (no 'shard' entry)")
    if data.get("schema_version") != SUMMARY_SCHEMA_VERSION:
        raise UsageError(
            f"'{path}' has summary schema {data.get('schema_version')}, "
            f"this mcompress reads {SUMMARY_SCHEMA_VERSION}: merge with the version that wrote it"
        )
    shard = data["shard"]
    positions = shard.get("positions")
    if not (
        isinstance(positions, list)
        and len(positions) == len(data.get("models", ()))
        and all(isinstance(p, int) and 0 <= p < shard.get("models_total", 0) for p in positions)
    ):
        raise UsageError(f"'{path}' is damaged: its shard positions do not match its models")
    return data


def _rows_in_batch_order(shards: list[dict[str, Any]], total: int) -> list[Row]:
    rows: list[Row | None] = [None] * total
    for data in shards:
        for position, row in zip(data["shard"]["positions"], data["models"], strict=True):
            if rows[position] is not None:
                raise UsageError(f"two shards list model {position + 1} of {total}")
            rows[position] = Row(**row)
    gaps = [i + 1 for i, row in enumerate(rows) if row is None]
    if gaps:
        raise UsageError(f"no shard lists model {gaps[0]} of {total}")
    return [row for row in rows if row is not None]
