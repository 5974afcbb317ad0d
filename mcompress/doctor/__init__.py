"""Pre-flight checks before a long run: what would fail, surprise or be left on the table.

Each check returns `Finding`s (severity note | warning | problem, message, fix). A problem
means the chosen config would fail on this model (exit 2); warnings and notes never fail.
Without a config, pass-specific checks are phrased for every pass and stay below "problem".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mcompress import model_io
from mcompress.config import PipelineConfig
from mcompress.doctor import model_checks, runtime_checks
from mcompress.doctor.findings import SEVERITIES, Context, Finding
from mcompress.errors import McompressError


def diagnose(
    path: Path,
    *,
    cfg: PipelineConfig | None = None,
    data: Path | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
) -> list[Finding]:
    """Run every check on the model at `path`; findings sorted problem -> warning -> note."""
    try:
        model = model_io.load_model(path)
    except McompressError as exc:
        return [
            Finding(
                "problem",
                "load",
                exc.message,
                exc.hint or "re-export or re-download the model; keep its .data files beside it",
            )
        ]
    if data is None and cfg is not None and cfg.validation.data:
        data = Path(cfg.validation.data)
    shapes = dict(input_shapes or {})
    if cfg is not None:
        shapes = {**{k: tuple(v) for k, v in cfg.validation.input_shapes.items()}, **shapes}
    ctx = Context(path, model, cfg, data, shapes)
    findings: list[Finding] = []
    for check in CHECKS:
        findings.extend(check(ctx))
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity))


def exit_code(findings: list[Finding]) -> int:
    """2 when any finding is a problem, else 0."""
    return 2 if any(f.severity == "problem" for f in findings) else 0


def to_dict(findings: list[Finding], path: Path, config_name: str | None) -> dict[str, Any]:
    """The `doctor --json` document."""
    counts = Counter(f.severity for f in findings)
    return {
        "model": str(path),
        "config": config_name,
        "findings": [asdict(f) for f in findings],
        "counts": {s: counts.get(s, 0) for s in SEVERITIES},
        "exit_code": exit_code(findings),
    }


CHECKS = [
    runtime_checks.check_size,
    runtime_checks.check_runtime,
    runtime_checks.check_config,
    runtime_checks.check_inputs,
    model_checks.check_opset,
    model_checks.check_kernels,
    model_checks.check_weight_range,
    runtime_checks.check_activations,
    model_checks.check_duplicates,
    model_checks.check_constants,
    model_checks.check_unused,
]
