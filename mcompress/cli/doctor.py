"""`mcompress doctor`: pre-flight checks before a long run, each finding with a fix."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from mcompress import config
from mcompress import doctor as doctor_mod
from mcompress.cli.common import InputShapeOpt, ModelArg, app, out, parse_shape


@app.command(epilog="Exit codes: 0 only notes or warnings · 2 a problem would make the run fail.")
def doctor(
    model: ModelArg,
    data: Annotated[
        Path | None, typer.Option("--data", help="Validation/calibration .npz (or folder).")
    ] = None,
    config_path: Annotated[
        str | None,
        typer.Option("-c", "--config", help="The config you plan to run (file or preset)."),
    ] = None,
    input_shape: InputShapeOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Pre-flight checks before a long run; each finding has a severity and a fix.

    Example: mcompress doctor model.onnx --config level2 --data val.npz
    """
    cfg = config.load(config_path) if config_path else None
    shapes = {name: tuple(dims) for name, dims in map(parse_shape, input_shape or [])}
    findings = doctor_mod.diagnose(model, cfg=cfg, data=data, input_shapes=shapes)
    code = doctor_mod.exit_code(findings)
    if json_out:
        document = doctor_mod.to_dict(findings, model, config_path)
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        _print_findings(model, config_path, findings)
    raise typer.Exit(code)


def _print_findings(
    model: Path, config_path: str | None, findings: list[doctor_mod.Finding]
) -> None:
    styles = {"problem": "bold red", "warning": "yellow", "note": "cyan"}
    against = f" (config {config_path})" if config_path else ""
    out.print(f"mcompress doctor: {model}{against}", markup=False, highlight=False)
    for finding in findings:
        out.print(f"[{styles[finding.severity]}]{finding.severity:<8}[/] ", end="", highlight=False)
        out.print(finding.message, markup=False, highlight=False, soft_wrap=True)
        out.print(f"         fix: {finding.fix}", markup=False, highlight=False, soft_wrap=True)
    counts = {s: sum(f.severity == s for f in findings) for s in doctor_mod.SEVERITIES}
    verdict = "the run would fail" if counts["problem"] else "ready to run"
    out.print(
        f"{counts['problem']} problem(s), {counts['warning']} warning(s), "
        f"{counts['note']} note(s): {verdict}",
        markup=False,
        highlight=False,
    )
