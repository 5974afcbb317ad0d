"""Per-layer budget search (`mcompress tune`): from the best global setting, the layers that
take it best get more pruning and fewer shared values, as many as the budget allows.

Each weight is altered alone by the passes' own code (`sensitivity.level_values`: the prune
pass's magnitude pruning, the cluster pass's k-means) and the output SQNR measured. For each
step of PUSH_STEPS the layers are ranked by that figure, and the number of layers pushed to the
step's setting (most robust first) is found by bisection over whole-model trials, compressed by
the passes (with calibration-based recovery where the config asks for it) and judged like the
final validation. Only the ranking comes from the per-layer figures, so errors adding up across
layers never fool the search: the trials decide. Clustered layers stay float in the quantize
pass (`exclude`): their K shared values are stored as a codebook with 2-5-bit indices, so int8
would only add rounding.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from mcompress import budget, fidelity, sensitivity
from mcompress.config import PipelineConfig
from mcompress.errors import ModelError
from mcompress.passes.prune.magnitude import layer_counts
from mcompress.weights import find_candidates

# (sparsity, shared values) given to the most robust layers, step after step.
PUSH_STEPS = ((0.5, 32), (0.65, 16), (0.8, 8))
# Inputs per sensitivity run: enough to rank layers, few enough to probe every layer quickly.
PROFILE_SAMPLES = 64
_DEFAULT_MIN_ELEMENTS = 2048


@dataclass
class Profile:
    """Output SQNR (dB) with each weight altered alone: per sparsity, per cluster count."""

    prune: dict[str, dict[float, float]]
    cluster: dict[str, dict[int, float]]
    # Each weight's share of zeros under the global search's one threshold: the starting point.
    start: dict[str, float]

    def robustness(self, name: str, sparsity: float, clusters: int) -> float:
        """The lower of the two figures: how well the layer takes this step alone."""
        return min(self.prune[name][sparsity], self.cluster[name][clusters])

    def ranking(self, step: tuple[float, int]) -> Callable[[str], float]:
        """Sort key putting the layers that take `step` best first."""
        return lambda name: -self.robustness(name, *step)


@dataclass
class Plan:
    """Per-weight sparsity and shared-value count (None: not clustered)."""

    sparsity: dict[str, float]
    clusters: dict[str, int | None]


def refine(state: budget.SearchState, sparsity: float | None, clusters: int | None) -> None:
    """Profile every layer, then push the most robust ones step by step; trials join `state`
    (the caller picks the winner among all of them)."""
    kinds = {p.type for p in state.cfg.passes}
    if not {"prune", "cluster"} <= kinds:
        return
    state.on_line("tune: measuring each layer's sensitivity (the passes' code, one layer alone)")
    found = profile(state, sparsity or 0.0)
    if not found.prune:
        return
    names = list(found.prune)
    state.on_line(f"tune: {len(names)} layers profiled; pushing the most robust ones")
    current = Plan(dict(found.start), {n: clusters for n in names})
    for step in PUSH_STEPS:
        order = sorted(names, key=found.ranking(step))
        counts = list(range(1, len(names) + 1))
        best = budget.bisect(counts, _trial(state, current, order, step), True, state.out_of_time)
        if best is None or state.out_of_time():
            return
        current = _pushed(current, order[:best], *step)


def _pushed(base: Plan, names: list[str], sparsity: float, clusters: int) -> Plan:
    """`base` with these layers at least this sparse and at most this many shared values."""
    plan = Plan(dict(base.sparsity), dict(base.clusters))
    for name in names:
        plan.sparsity[name] = max(plan.sparsity[name], sparsity)
        old = plan.clusters[name]
        plan.clusters[name] = clusters if old is None else min(old, clusters)
    return plan


def _trial(
    state: budget.SearchState, base: Plan, order: list[str], step: tuple[float, int]
) -> Callable[[int], bool]:
    """Whether pushing the first `count` layers of `order` one step keeps the gates."""

    def passes(count: int) -> bool:
        label = f"per layer: {count} of {len(order)} at {step[0]:g}, {step[1]}"
        plan = _pushed(base, order[:count], *step)
        return budget.judge(state, label, layered(state.cfg, plan)).passed

    return passes


def profile(state: budget.SearchState, sparsity: float) -> Profile:
    """Each prunable weight alone at each level, through one in-memory session, and its share
    of zeros under one global threshold at `sparsity`."""
    model = sensitivity.load_prepared(state.model)
    prune_cfg = next((p for p in state.cfg.passes if p.type == "prune"), None)
    min_elements = getattr(prune_cfg, "min_elements", _DEFAULT_MIN_ELEMENTS)
    probed, _ = find_candidates(model, min_elements)
    if not probed:
        return Profile({}, {}, {})
    sparsities = sorted({s for s, _ in PUSH_STEPS})
    counts = sorted({k for _, k in PUSH_STEPS})
    prune_values = {s: sensitivity.level_values(model, probed, "prune", s) for s in sparsities}
    cluster_values = {k: sensitivity.level_values(model, probed, "cluster", k) for k in counts}
    runner, reference = _runner(model, probed, state.inputs.feeds[:PROFILE_SAMPLES], state)

    def sqnr(cand: Any, values: Any) -> float:
        if values is None:
            return math.inf
        return fidelity.sqnr_db(reference, sensitivity.flat(runner.run(cand, values)))

    zeros = layer_counts(probed, sparsity, "global") if sparsity else [0] * len(probed)
    start = {c.weight.name: k / c.weight.size for c, k in zip(probed, zeros, strict=True)}
    found = Profile({}, {}, start)
    for cand in probed:
        name = cand.weight.name
        found.prune[name] = {s: sqnr(cand, v.get(name)) for s, v in prune_values.items()}
        found.cluster[name] = {k: sqnr(cand, v.get(name)) for k, v in cluster_values.items()}
    return found


def _runner(
    model: Any, probed: list[Any], feeds: list[dict[str, Any]], state: budget.SearchState
) -> tuple[sensitivity.Runner, Any]:
    """A runner over the samples stacked into one batch (one run per probe instead of one per
    sample) when the model takes that; else over the samples one by one."""
    try:
        stacked = {name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]}
        runner = sensitivity.Runner(model, probed, replace(state.inputs, feeds=[stacked]))
        return runner, sensitivity.flat(runner.run())
    except (ModelError, ValueError):
        runner = sensitivity.Runner(model, probed, replace(state.inputs, feeds=feeds))
        return runner, sensitivity.flat(runner.run())


def layered(cfg: PipelineConfig, plan: Plan) -> PipelineConfig:
    """`cfg` with per-layer prune sparsities and cluster counts (`layers` keys), clustered
    layers kept float by the quantize pass (`exclude`), and no search section: a plain config
    that `mcompress run` reproduces byte for byte."""
    clustered = {n: k for n, k in plan.clusters.items() if k is not None}
    prune_cfg = next((p for p in cfg.passes if p.type == "prune"), None)
    passes = []
    for pass_cfg in cfg.passes:
        data = pass_cfg.model_dump(exclude_unset=True)
        if pass_cfg.type == "prune":
            if not any(plan.sparsity.values()):
                continue
            data.update(_per_layer(plan.sparsity, "sparsity"), scope="layer")
        elif pass_cfg.type == "cluster":
            if not clustered:
                continue
            data.update(_per_layer(clustered, "clusters"))
            data["min_elements"] = getattr(prune_cfg, "min_elements", _DEFAULT_MIN_ELEMENTS)
            unclustered = [n for n in plan.clusters if n not in clustered]
            if unclustered:
                data["exclude"] = sorted({*data.get("exclude", ()), *unclustered})
        elif pass_cfg.type == "quantize":
            data.pop("per_channel", None)
            if clustered:
                data["exclude"] = sorted({*data.get("exclude", ()), *clustered})
        passes.append(data)
    plain = cfg.model_dump(by_alias=True, exclude_unset=True, exclude={"search"})
    plain["passes"] = passes
    return PipelineConfig.model_validate(plain)


def _per_layer(values: dict[str, Any], key: str) -> dict[str, Any]:
    """The most common value as the pass's own setting, the others as `layers` overrides."""
    common = Counter(v for v in values.values() if v).most_common(1)[0][0]
    return {key: common, "layers": {n: v for n, v in sorted(values.items()) if v != common}}
