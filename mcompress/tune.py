"""`mcompress tune`: the smallest (or fastest) model within an accuracy (or fidelity) budget,
found by the budget search over pruning sparsity and weight sharing, globally and then per layer
(`layer_search`), and the plain pipeline that reproduces it (`mcompress run -c tuned.yaml`
writes the same bytes)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from mcompress import budget, config
from mcompress.errors import UsageError

# Searched on top of strip + prune + cluster + int8 (the max-compression pipeline).
SPARSITIES = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
CLUSTERS = [4, 8, 16, 32, 64, 128]
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


def template(
    time_budget: float | None, calibration: str | None, objective: str = "size"
) -> config.PipelineConfig:
    """The pipeline searched: strip, magnitude pruning, clustering, int8; globally first, then
    per layer. The budget (the `validate:` section) comes from the command line."""
    prune: dict[str, Any] = {"type": "prune", "sparsity": 0.3, "scope": "global",
                             "min_elements": 2048}  # fmt: skip
    cluster: dict[str, Any] = {"type": "cluster", "clusters": 16}
    if calibration is not None:
        _with_calibration([prune, cluster], calibration)
    search: dict[str, Any] = {
        "sparsity": SPARSITIES, "clusters": CLUSTERS, "objective": objective,
    }  # fmt: skip
    if time_budget is not None:
        search["time_budget"] = time_budget
    return config.build(
        {
            "passes": [
                {"type": "strip"},
                prune,
                cluster,
                {"type": "quantize", "mode": "dynamic", "per_channel": False},
            ],
            "search": search,
        }
    )


def _with_calibration(passes: list[dict[str, Any]], calibration: str) -> None:
    """Calibration-based recovery for the passes that offer it (a `calibration` option)."""
    from mcompress.passes import PASSES

    for data in passes:
        if "calibration" in PASSES[data["type"]].Config.model_fields:
            data["calibration"] = calibration


def parse_duration(text: str) -> float:
    """'10m', '90s', '1h' or plain seconds -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text.lower())
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"--time-budget: '{text}' is not a duration like 10m, 90s or 1h")
    return float(match.group(1)) * _UNITS[match.group(2)]


def to_yaml(cfg: config.PipelineConfig, header: str) -> str:
    """A plain pipeline config as YAML that `mcompress run -c` reads back to the same config."""
    data = cfg.model_dump(by_alias=True, exclude_unset=True, exclude={"search"})
    data["passes"] = [dict(p) for p in data["passes"]]
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
    return "".join(f"# {line}\n" for line in header.splitlines()) + body


def describe(trial: budget.Trial, index: int) -> str:
    """One progress line per trial (plain text: readable in a CI log)."""
    if not trial.ran:
        return f"tune: trial {index}: {trial.label}: not run (the time budget is spent)"
    figures = ", ".join(
        f"{name} {value:.4g}" for name, value in trial.figures.items() if value is not None
    )
    verdict = "ok" if trial.passed else "over budget"
    return (
        f"tune: trial {index}: {trial.label}: {(trial.size_bytes or 0) / 1000:.1f} KB, "
        f"{figures or 'no figure'}: {verdict} ({trial.seconds:.1f} s)"
    )


def emitted_path(output: Path) -> Path:
    """Where the winning pipeline is written by default: beside the output model."""
    return output.with_name(output.name.removesuffix(".onnx") + ".yaml")
