"""`mcompress batch-merge`: one summary.json (and one job summary) from a sharded batch."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from mcompress import batch as batch_mod
from mcompress import batch_merge, render_batch
from mcompress.cli.batch import EXIT_INTERRUPTED, SUMMARY_HELP, paths_argument, summary_table
from mcompress.cli.common import (
    EXIT_CODES_HELP,
    WriteOptions,
    app,
    err,
    out,
    shared_options,
    wide_console,
)


@app.command(
    "batch-merge",
    epilog=EXIT_CODES_HELP + " batch-merge exits with the merged batch's code, as batch would.",
)
@shared_options(
    "force", "json_out", help={**SUMMARY_HELP, "force": "Replace an existing summary.json."}
)
def batch_merge_command(
    opts: WriteOptions,
    paths: Annotated[
        list[Path],
        paths_argument(
            "Folders holding summary-I-of-N.json files (searched recursively), or the files."
        ),
    ],
    out_dir: Annotated[
        Path | None,
        typer.Option("-o", "--out-dir", help="Where summary.json goes (default: first folder)."),
    ] = None,
) -> None:
    """Merge the summaries of `batch --shard I/N` runs into one summary.json.

    Every shard 1..N must be there once; the rows come back in the order the whole batch
    would list them. With GITHUB_STEP_SUMMARY set, the merged table goes to the job summary.

    Example: mcompress batch-merge out/
    """
    files = batch_merge.find_shard_summaries(paths)
    outcome, config_name = batch_merge.merge(files)
    target = out_dir or (paths[0] if paths[0].is_dir() else paths[0].parent)
    target.mkdir(parents=True, exist_ok=True)
    data = batch_mod.summary(outcome, config_name, target)
    summary_path = batch_mod.write_summary(data, target, force=opts.force)
    render_batch.append_to_step_summary(data)
    if opts.json_out:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        err.print(f"merged {len(files)} shard summaries", markup=False, highlight=False)
        wide_console().print(summary_table(outcome))
        out.print(f"summary: {summary_path}")
    raise typer.Exit(EXIT_INTERRUPTED if outcome.interrupted else outcome.exit_code)
