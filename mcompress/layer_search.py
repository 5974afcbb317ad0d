"""Per-layer budget search (`mcompress tune`, max-compression): from the best global setting,
the layers that take it best get more pruning and fewer shared values, as many as the budget
allows.

Each weight is altered alone by the passes' own code (`sensitivity.level_values`: the prune
pass's magnitude pruning, the cluster pass's k-means) at each step of PUSH_STEPS beyond the
global setting, and the output SQNR measured. `tune` (`refine`) ranks the layers by that figure
for each step and finds how many take it by bisection over whole-model trials, step after step
(~13 trials on 17 layers); so do presets without calibration data. Presets whose trials
recover on calibration data (`refine_quick`: each trial is a recovery sweep) bisect once over
a threshold on the figure, which gives every layer the deepest step it takes alone above it
(at most MAX_THRESHOLDS thresholds: 3 trials). The trials are compressed by the passes (with
calibration-based recovery where the config asks for it) and judged like the final validation:
only the ranking comes from the per-layer figures, so errors adding up across layers never
fool the search. Clustered layers stay float in the quantize pass (`exclude`): their K shared
values are stored as a codebook with 2-5-bit indices, so int8 would only add rounding. Last,
the MatMul weights still int8 (or above 16 values) get 4-bit block-wise storage where the
budget allows (most robust first, by bisection again): a second quantize pass with `bits: 4`
(run as int8 by onnxruntime), which is what transformers need, whose MatMuls rarely take
per-tensor weight sharing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mcompress import budget, fidelity, sensitivity
from mcompress.config import PipelineConfig
from mcompress.errors import ModelError
from mcompress.passes.prune.magnitude import layer_counts
from mcompress.weights import find_candidates

# (sparsity, shared values) given to the most robust layers, step after step.
PUSH_STEPS = ((0.5, 32), (0.65, 16), (0.8, 8))
# 4-bit blocks hold 16 levels: a layer clustered to at most this many values gains nothing.
INT4_LEVELS = 16
# Inputs per sensitivity run: enough to rank layers, few enough to probe every layer quickly.
PROFILE_SAMPLES = 32
# Thresholds the push stage bisects over at most: 7 take at most 3 whole-model trials.
MAX_THRESHOLDS = 7
_DEFAULT_MIN_ELEMENTS = 2048


@dataclass
class Profile:
    """Output SQNR (dB) with each weight altered alone: per sparsity, per cluster count (inf:
    the step leaves the weight as the global setting has it)."""

    prune: dict[str, dict[float, float]]
    cluster: dict[str, dict[int, float]]
    # Each weight's share of zeros under the global search's one threshold: the starting point.
    start: dict[str, float]
    # Output SQNR with each MatMul weight alone in the quantize pass's 4-bit blocks.
    int4: dict[str, float] = field(default_factory=dict)

    def robustness(self, name: str, sparsity: float, clusters: int) -> float:
        """The lower of the two figures: how well the layer takes this step alone."""
        return min(self.prune[name][sparsity], self.cluster[name][clusters])

    def ranking(self, step: tuple[float, int]) -> Callable[[str], float]:
        """Sort key putting the layers that take `step` best first."""
        return lambda name: -self.robustness(name, *step)

    def depths(self, threshold: float) -> dict[str, int]:
        """Per layer, how many steps of PUSH_STEPS it takes alone at or above `threshold`
        (stopping at the first it does not take): lower thresholds push every layer deeper."""
        found = {}
        for name in self.prune:
            depth = 0
            while depth < len(PUSH_STEPS) and (
                self.robustness(name, *PUSH_STEPS[depth]) >= threshold
            ):
                depth += 1
            found[name] = depth
        return found

    def thresholds(self) -> list[float]:
        """The figures where some layer takes one step more, highest (fewest pushed) first,
        thinned evenly to at most MAX_THRESHOLDS."""
        values = sorted(
            {
                min(self.robustness(name, *step) for step in PUSH_STEPS[: i + 1])
                for name in self.prune
                for i in range(len(PUSH_STEPS))
            }
            - {math.inf, -math.inf},
            reverse=True,
        )
        if len(values) <= MAX_THRESHOLDS:
            return values
        picks = np.linspace(0, len(values) - 1, MAX_THRESHOLDS).round().astype(int)
        return [values[i] for i in sorted(set(picks.tolist()))]


@dataclass
class Plan:
    """Per-weight sparsity and shared-value count (None: not clustered)."""

    sparsity: dict[str, float]
    clusters: dict[str, int | None]
    int4: set[str] = field(default_factory=set)  # MatMul weights stored in 4-bit blocks


def refine(state: budget.SearchState, sparsity: float | None, clusters: int | None) -> None:
    """`mcompress tune`: profile every layer, then push the most robust ones step by step, one
    bisection over the layer count per step: finer than `refine_quick` (the classifier's tune
    --max-accuracy-drop 0.01 came out 175.7 KB with it, 144.1 KB step by step)."""
    found = _profiled(state, sparsity, clusters)
    if found is None:
        return
    names = list(found.prune)
    start = Plan(dict(found.start), dict.fromkeys(names, clusters))
    depths = dict.fromkeys(names, 0)
    for depth, step in enumerate(PUSH_STEPS, 1):
        order = sorted(names, key=found.ranking(step))
        passes = _step_trial(state, start, depths, order, depth)
        best = budget.bisect(list(range(1, len(names) + 1)), passes, True, state.out_of_time)
        if best is None:
            break
        depths = _pushed(depths, order[:best], depth)
    if not state.out_of_time():
        _four_bit_stage(state, found, _deepened(start, depths))


def _pushed(depths: dict[str, int], names: list[str], depth: int) -> dict[str, int]:
    """`depths` with these layers at least `depth` steps deep."""
    return {**depths, **{n: max(depths[n], depth) for n in names}}


def _step_trial(
    state: budget.SearchState, start: Plan, depths: dict[str, int], order: list[str], depth: int
) -> Callable[[int], bool]:
    """Whether pushing the first `count` layers of `order` to step `depth` keeps the gates."""
    sparsity, clusters = PUSH_STEPS[depth - 1]

    def passes(count: int) -> bool:
        label = f"per layer: {count} of {len(order)} at {sparsity:g}, {clusters}"
        plan = _deepened(start, _pushed(depths, order[:count], depth))
        return budget.judge(state, label, layered(state.cfg, plan)).passed

    return passes


def refine_quick(state: budget.SearchState, sparsity: float | None, clusters: int | None) -> None:
    """Presets recovering on calibration data (`preset_stage`): profile every layer, then one
    bisection over the robustness threshold pushes the most robust ones (3 trials, against
    `refine`'s ~13)."""
    found = _profiled(state, sparsity, clusters)
    if found is None:
        return
    start = Plan(dict(found.start), dict.fromkeys(found.prune, clusters))

    def passes(threshold: float) -> bool:
        depths = found.depths(threshold)
        return budget.judge(
            state, _label(depths), layered(state.cfg, _deepened(start, depths))
        ).passed

    best = budget.bisect(found.thresholds(), passes, True, state.out_of_time)
    current = start if best is None else _deepened(start, found.depths(best))
    if not state.out_of_time():
        _four_bit_stage(state, found, current)


def preset_stage(cfg: PipelineConfig) -> budget.Refine | None:
    """A preset's per-layer stage (`per_layer: true`): `refine_quick` when the passes recover
    on calibration data, where each trial is a recovery sweep (~4 s of CPU on the classifier)
    and the per-step bisections' ~13 trials took the search from 41 to 120 s of CPU; else
    `refine`, whose trials are cheap and which found 0.75-0.9x the quick stage's bytes on the
    shared models without calibration."""
    if not (cfg.search and cfg.search.per_layer):
        return None
    return refine_quick if budget.recovers(cfg) else refine


def _profiled(
    state: budget.SearchState, sparsity: float | None, clusters: int | None
) -> Profile | None:
    """Every layer's profile beyond the global setting; None when there is nothing to push
    (no prune and cluster passes, or no layer large enough)."""
    kinds = {p.type for p in state.cfg.passes}
    if not {"prune", "cluster"} <= kinds:
        return None
    state.on_line("tune: measuring each layer's sensitivity (the passes' code, one layer alone)")
    found = profile(state, sparsity or 0.0, clusters)
    if not found.prune:
        return None
    state.on_line(f"tune: {len(found.prune)} layers profiled; pushing the most robust ones")
    return found


def _deepened(start: Plan, depths: dict[str, int]) -> Plan:
    """`start` with each layer pushed through its first `depth` steps of PUSH_STEPS."""
    plan = Plan(dict(start.sparsity), dict(start.clusters))
    for name, depth in depths.items():
        if depth:
            sparsity, clusters = PUSH_STEPS[depth - 1]
            plan.sparsity[name] = max(plan.sparsity[name], sparsity)
            old = plan.clusters[name]
            plan.clusters[name] = clusters if old is None else min(old, clusters)
    return plan


def _label(depths: dict[str, int]) -> str:
    """`per layer: 6 of 17 at 0.8, 8; 8 at 0.65, 16` (deepest step first)."""
    counts = Counter(depths.values())
    parts = [
        f"{counts[d]} at {PUSH_STEPS[d - 1][0]:g}, {PUSH_STEPS[d - 1][1]}"
        for d in range(len(PUSH_STEPS), 0, -1)
        if counts[d]
    ]
    if not parts:
        return f"per layer: 0 of {len(depths)} pushed"
    parts[0] = parts[0].replace(" at ", f" of {len(depths)} at ", 1)
    return "per layer: " + "; ".join(parts)


def _four_bit_stage(state: budget.SearchState, found: Profile, base: Plan) -> None:
    """The most robust MatMul weights left int8 (or above 16 values) in 4-bit blocks: how
    many, by bisection over whole-model trials. The profile measured them unpruned."""
    order = sorted(
        (n for n, k in base.clusters.items() if n in found.int4 and (k or 256) > INT4_LEVELS),
        key=lambda n: -found.int4[n],
    )

    def passes(count: int) -> bool:
        label = f"per layer: {count} of {len(order)} MatMul weights in 4-bit"
        chosen = order[:count]
        plan = Plan(
            {**base.sparsity, **{n: _unpushed_to_zero(base.sparsity[n]) for n in chosen}},
            {**base.clusters, **dict.fromkeys(chosen)},
            set(chosen),
        )
        return budget.judge(state, label, layered(state.cfg, plan)).passed

    if order:
        budget.bisect(list(range(1, len(order) + 1)), passes, True, state.out_of_time)


def profile(state: budget.SearchState, sparsity: float, clusters: int | None) -> Profile:
    """Each prunable weight alone at each step beyond the global setting (`sparsity`, as one
    global threshold sets it per weight, and `clusters`), through one in-memory session."""
    model = sensitivity.load_prepared(state.model)
    prune_cfg = next((p for p in state.cfg.passes if p.type == "prune"), None)
    min_elements = getattr(prune_cfg, "min_elements", _DEFAULT_MIN_ELEMENTS)
    probed, _ = find_candidates(model, min_elements)
    if not probed:
        return Profile({}, {}, {})
    sparsities = sorted({s for s, _ in PUSH_STEPS})
    counts = sorted({k for _, k in PUSH_STEPS if clusters is None or k < clusters})
    prune_values = {s: sensitivity.level_values(model, probed, "prune", s) for s in sparsities}
    cluster_values = {k: sensitivity.level_values(model, probed, "cluster", k) for k in counts}
    int4_values = sensitivity.level_values(model, _int4_eligible(probed), "quantize", 4)
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
        found.prune[name] = {
            s: sqnr(cand, v.get(name)) if s > start[name] else math.inf
            for s, v in prune_values.items()
        }
        found.cluster[name] = dict.fromkeys((k for _, k in PUSH_STEPS), math.inf)
        found.cluster[name].update({k: sqnr(cand, v.get(name)) for k, v in cluster_values.items()})
        if name in int4_values:
            found.int4[name] = sqnr(cand, int4_values[name])
    return found


def _unpushed_to_zero(sparsity: float) -> float:
    """A 4-bit layer's sparsity: kept where a push step set it (the trials showed the layer
    takes it), else none: the global stage's share was chosen for int8, and 4-bit rounding
    adds to its error (unpruned 4-bit is already about half of int8's bytes)."""
    return sparsity if sparsity >= PUSH_STEPS[0][0] else 0.0


def _int4_eligible(probed: list[Any]) -> list[Any]:
    """The weights the quantize pass stores in 4-bit blocks with `bits: 4`: 2-D weights of
    main-graph MatMuls (other weights stay int8 there)."""
    return [
        c for c in probed
        if c.key[0] == 0 and c.ops == ["MatMul"] and len(c.weight.tensor.dims) == 2
    ]  # fmt: skip


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
    layers kept float by the quantize pass (`exclude`), 4-bit MatMul weights left to a second
    quantize pass with `bits: 4`, and no search section: a plain config that `mcompress run`
    reproduces byte for byte."""
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
            if clustered or plan.int4:
                data["exclude"] = sorted({*data.get("exclude", ()), *clustered, *plan.int4})
            if plan.int4:
                passes.append(data)
                data = _four_bit_pass(data, clustered, prune_cfg)
        passes.append(data)
    plain = cfg.model_dump(by_alias=True, exclude_unset=True, exclude={"search"})
    plain["passes"] = passes
    return PipelineConfig.model_validate(plain)


def _four_bit_pass(
    int8: dict[str, Any], clustered: dict[str, int], prune_cfg: Any
) -> dict[str, Any]:
    """The quantize pass after int8 that stores what int8 left float, but the clustered
    weights, in 4-bit blocks: the plan's 4-bit MatMul weights (GPTQ-rounded with the search's
    calibration data, when it has some)."""
    data: dict[str, Any] = {"type": "quantize", "mode": int8.get("mode", "dynamic"), "bits": 4}
    if clustered:
        data["exclude"] = sorted(clustered)
    calibration = getattr(prune_cfg, "calibration", None)
    if calibration is not None:
        data["calibration"] = calibration
    return data


def _per_layer(values: dict[str, Any], key: str) -> dict[str, Any]:
    """The most common value as the pass's own setting, the others as `layers` overrides."""
    common = Counter(v for v in values.values() if v).most_common(1)[0][0]
    return {key: common, "layers": {n: v for n, v in sorted(values.items()) if v != common}}
