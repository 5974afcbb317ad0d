"""Budget search: instead of a fixed recipe, the most compressing prune sparsity and cluster
count that keep the config's gates (the fidelity floor, and the accuracy drop with labels).

Used by presets (a `search:` section) and by `mcompress tune`. Each trial compresses with the
passes' own code into a temporary file and is judged like the final validation, on the same
inputs; the winner is returned as a plain config that `mcompress run -c` reproduces exactly.
Fidelity is assumed to fall as compression grows, so each setting is found by bisection.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mcompress import performance, validate
from mcompress.config import PipelineConfig, SearchConfig, SearchGrid
from mcompress.inputs import InputSet
from mcompress.report import RunReport
from mcompress.session_pair import SessionPair
from mcompress.validate import load_session

# compress(config, output path) -> the report of a run without validation
Compress = Callable[[PipelineConfig, Path], RunReport]
OnTrial = Callable[["Trial"], None]
# refine(search state, best global sparsity, best global cluster count): more trials
Refine = Callable[["SearchState", float | None, int | None], None]
_KNOB_PASSES = ("prune", "cluster")
# Without an accuracy budget (labelled --data) a search aims well above the fidelity floor: the
# floor only stops broken models, so the most compressing setting that just keeps it is nearly
# broken (the shared classifier on random inputs: 90% sparsity and 4 shared values kept the
# 1 dB floor at 1.0 dB, against 36.9 dB for int8). A candidate keeps every judged output at
# SEARCH_MIN_SQNR_DB (about 10% relative error) and SEARCH_MIN_TOP1 top-1 agreement, unless the
# config sets min_sqnr or min_top1_agreement itself.
SEARCH_MIN_SQNR_DB = 20.0
SEARCH_MIN_TOP1 = 0.98
# Trials recover on at most this many calibration samples, and the chosen config is the judged
# trial itself (the final run repeats it exactly, so it cannot fall below the gate it kept).
# Recovery's cost grows with the samples: the classifier's max-compression search took 429 s
# on 128 (2 busy cores) and 129 s on 32.
SEARCH_CALIBRATION_SAMPLES = 32
# Outputs of the original model a search keeps to judge later trials without running it again.
REMEMBER_BYTES = 256 * 1024 * 1024
# Runs per candidate when the objective is latency (each model interleaved with the original).
LATENCY_RUNS = 10


@dataclass
class Trial:
    """One candidate: its settings, size and whether it kept every gate."""

    label: str
    sparsity: float | None
    clusters: int | None
    size_bytes: int | None  # None: not run, the time budget was spent (`ran` is False)
    passed: bool
    figures: dict[str, float | None] = field(default_factory=dict)
    seconds: float = 0.0
    latency_ratio: float | None = None
    ran: bool = True


class RememberedSession:
    """The original model's session for every trial of a search. Each trial is judged on the
    same inputs, so the original's outputs are computed in the first trial and answered from
    memory after that (up to REMEMBER_BYTES of outputs); loaded when first asked for."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.session: Any = None
        self.runs: dict[bytes, list[Any]] = {}
        self.kept = 0

    def get(self) -> RememberedSession:
        if self.session is None:
            self.session = load_session(self.path, "original")
        return self

    def get_inputs(self) -> Any:
        return self.session.get_inputs()

    def get_outputs(self) -> Any:
        return self.session.get_outputs()

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[Any]:
        key = hashlib.sha1(repr(names).encode())
        for name in sorted(feed):
            value = np.ascontiguousarray(feed[name])
            key.update(f"{name}{value.dtype}{value.shape}".encode())
            key.update(value.tobytes())
        found = self.runs.get(key.digest())
        if found is None:
            found = list(self.session.run(names, feed))
            size = sum(np.asarray(v).nbytes for v in found)
            if self.kept + size <= REMEMBER_BYTES:
                self.runs[key.digest()] = found
                self.kept += size
        return found


@dataclass
class SearchState:
    cfg: PipelineConfig
    model: Path
    inputs: InputSet
    compress: Compress
    workdir: Path
    on_trial: OnTrial
    deadline: float | None
    trials: list[Trial] = field(default_factory=list)
    configs: dict[str, PipelineConfig] = field(default_factory=dict)
    objective: str = "size"
    on_line: Callable[[str], None] = lambda line: None
    original: RememberedSession = field(init=False)

    def __post_init__(self) -> None:
        self.original = RememberedSession(self.model)

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline


def search(
    cfg: PipelineConfig,
    model: Path,
    compress: Compress,
    on_trial: OnTrial = lambda trial: None,
    on_line: Callable[[str], None] = lambda line: None,
    refine: Refine | None = None,
) -> tuple[PipelineConfig, dict[str, Any]]:
    """The smallest (or fastest, `objective: latency`) config within the gates, and a report
    section with every trial and the size-vs-fidelity front. Never larger than the config
    without prune and cluster passes (level1 for the presets); when nothing else fits, that
    config, with a note. `refine` (tune's per-layer search) continues from the best global
    setting."""
    spec = cfg.search or SearchConfig()
    started = time.perf_counter()
    deadline = started + spec.time_budget if spec.time_budget else None
    with tempfile.TemporaryDirectory(prefix="mcompress-search-") as tmp:
        state = SearchState(
            cfg, model, validate.feeds_for(model, cfg.validation), compress, Path(tmp),
            on_trial, deadline, objective=spec.objective, on_line=on_line,
        )  # fmt: skip
        baseline = _try(state, "baseline (no prune, no cluster)", None, None)
        lists = grid(cfg)
        sparsity = _best_sparsity(state, lists.sparsity)
        clusters = _best_clusters(state, lists.clusters, sparsity)
        fitting = _fitting(state.trials, baseline)
        global_trials = len(state.trials)
        if refine is not None and not state.out_of_time():
            start = min(fitting, key=_objective("size"), default=baseline)
            refine(state, start.sparsity, start.clusters)
    fitting = _fitting(state.trials, baseline)
    best = min(fitting, key=_objective(spec.objective), default=baseline)
    seconds = time.perf_counter() - started
    notes = [
        f"search: chose {best.label} of {len(state.trials)} trials ({seconds:.0f} s; every "
        "trial in --report/--html)"
    ]
    if best is baseline and any(t.ran for t in state.trials[1:]):
        notes.append(
            "no prune or cluster setting kept the gates within the baseline's size: "
            "the result is the baseline (level1 for the presets)"
        )
    if len(state.trials) > global_trials and any(best is t for t in state.trials[:global_trials]):
        notes.append(
            "no per-layer candidate was smaller within the budget: the global setting is the "
            "most it allows here"
        )
    cut = sum(not t.ran for t in state.trials)
    if state.out_of_time():
        untried = f": {cut} candidates not run" if cut else ""
        notes.append(f"the time budget ({spec.time_budget:g} s) ended the search{untried}")
    section = {
        "chosen": {"sparsity": best.sparsity, "clusters": best.clusters, "label": best.label},
        "searched": {"sparsity": sparsity, "clusters": clusters},
        "objective": spec.objective,
        "trials": [asdict(t) for t in state.trials],
        "front": front(state.trials),
        "seconds": seconds,
        "notes": notes,
    }
    return state.configs[best.label], section


def _fitting(trials: list[Trial], baseline: Trial) -> list[Trial]:
    """Trials that kept the gates and are no larger than the baseline."""
    limit = baseline.size_bytes or 0
    return [t for t in trials if t.passed and t.size_bytes is not None and t.size_bytes <= limit]


def _objective(name: str) -> Callable[[Trial], float]:
    """Sort key of the winner: bytes, or the latency ratio measured (size breaks ties)."""
    if name == "latency":
        return lambda t: (t.latency_ratio or float("inf")) + (t.size_bytes or 0) * 1e-15
    return lambda t: float(t.size_bytes or 0)


def planned_trials(cfg: PipelineConfig) -> int:
    """How many trials a search of `cfg` runs at most: the baseline and two bisections."""
    lists = grid(cfg)
    steps = [
        len(values).bit_length()
        for values, kind in ((lists.sparsity, "prune"), (lists.clusters, "cluster"))
        if values and _has(cfg, kind)
    ]
    return 1 + sum(steps)


def recovers(cfg: PipelineConfig) -> bool:
    """Whether a pass of `cfg` recovers on calibration data: each trial is a recovery sweep."""
    return any(
        getattr(p, "calibration", None) is not None and getattr(p, "recover", False)
        for p in cfg.passes
    )


def grid(cfg: PipelineConfig) -> SearchGrid:
    """The sparsities and cluster counts the global stage bisects over: the search's
    `with_calibration` lists when the passes recover and it has them, else its own."""
    spec = cfg.search or SearchConfig()
    return spec.with_calibration if spec.with_calibration and recovers(cfg) else spec


def configure(cfg: PipelineConfig, sparsity: float | None, clusters: int | None) -> PipelineConfig:
    """`cfg` with its prune/cluster passes set to these values, or dropped for None, and no
    search section: a plain config. Without clustering, quantization is per channel again."""
    passes = []
    for pass_cfg in cfg.passes:
        data = pass_cfg.model_dump(exclude_unset=True)
        if pass_cfg.type == "prune":
            if sparsity is None:
                continue
            data["sparsity"] = sparsity
        elif pass_cfg.type == "cluster":
            if clusters is None:
                continue
            data["clusters"] = clusters
        elif pass_cfg.type == "quantize" and clusters is None:
            data.pop("per_channel", None)
        passes.append(data)
    plain = cfg.model_dump(by_alias=True, exclude_unset=True, exclude={"search"})
    plain["passes"] = passes
    return PipelineConfig.model_validate(plain)


def front(trials: list[Trial]) -> list[dict[str, Any]]:
    """Trials that kept the gates and that no smaller passing trial beats, smallest first:
    the size-vs-fidelity front (fidelity: the floor's figure)."""
    passing = sorted((t for t in trials if t.passed), key=lambda t: t.size_bytes or 0)
    kept: list[dict[str, Any]] = []
    for t in passing:
        score = _score(t)
        if not kept or score > kept[-1]["score"]:
            kept.append({"label": t.label, "size_bytes": t.size_bytes, "score": score,
                         "figures": t.figures})  # fmt: skip
    return kept


def _score(trial: Trial) -> float:
    """The floor's figure (top-1 agreement or SQNR) as one number for the front."""
    values = [v for k, v in trial.figures.items() if k.startswith("min_") and v is not None]
    return min(values) if values else 0.0


def _best_sparsity(state: SearchState, values: list[float]) -> float | None:
    """The largest sparsity that keeps the gates (bisection), with no clustering."""
    if not values or not _has(state.cfg, "prune"):
        return None
    return bisect(
        values, lambda s: _try(state, f"sparsity {s:g}", s, None).passed, True, state.out_of_time
    )


def _best_clusters(state: SearchState, values: list[int], sparsity: float | None) -> int | None:
    """The fewest clusters that keep the gates on top of `sparsity` (bisection)."""
    if not values or not _has(state.cfg, "cluster"):
        return None
    prefix = f"sparsity {sparsity:g}, " if sparsity is not None else ""

    def ok(k: int) -> bool:
        return _try(state, f"{prefix}{k} clusters", sparsity, k).passed

    return bisect(values, ok, False, state.out_of_time)


def bisect(
    values: list[Any],
    passes: Callable[[Any], bool],
    largest: bool,
    stop: Callable[[], bool] = lambda: False,
) -> Any:
    """The largest (or smallest) value of sorted `values` that passes, assuming everything
    beyond it fails (more compression, less fidelity); None when none passes. Ends early,
    with the best so far, once `stop()` says so (the time budget is spent)."""
    ordered = values if largest else list(reversed(values))
    lo, hi, found = 0, len(ordered) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if passes(ordered[mid]):
            found, lo = ordered[mid], mid + 1
        elif stop():
            break
        else:
            hi = mid - 1
    return found


def _has(cfg: PipelineConfig, pass_type: str) -> bool:
    return any(p.type == pass_type for p in cfg.passes)


def _try(state: SearchState, label: str, sparsity: float | None, clusters: int | None) -> Trial:
    """Compress with these prune/cluster settings and judge the result."""
    return judge(state, label, configure(state.cfg, sparsity, clusters), sparsity, clusters)


def judge(
    state: SearchState,
    label: str,
    candidate: PipelineConfig,
    sparsity: float | None = None,
    clusters: int | None = None,
) -> Trial:
    """Compress `candidate` into the work folder and judge it like the final validation."""
    if state.out_of_time() and state.trials:
        return _not_run(state, Trial(label, sparsity, clusters, None, False, ran=False))
    started = time.perf_counter()
    candidate = _calibration_capped(candidate)
    plain = candidate.model_dump(by_alias=True, exclude_unset=True)
    plain["validate"] = {**plain.get("validate", {}), "enabled": False}
    path = state.workdir / f"trial{len(state.trials)}.onnx"
    report = state.compress(PipelineConfig.model_validate(plain), path)
    sessions = SessionPair(lambda k: state.original.get() if k == 0 else load_session(path), False)
    report.validation = validate.compare_outputs(sessions, state.inputs, state.cfg.validation)
    gates = [
        g
        for g in validate.evaluate_gates(state.cfg.validation, report)
        if g.name != "max_latency_ratio"  # not measured while searching
    ]
    trial = Trial(
        label=label,
        sparsity=sparsity,
        clusters=clusters,
        size_bytes=report.output.size_bytes if report.output else 0,
        passed=all(g.passed for g in gates) and _within_margin(state.cfg, report, gates),
        figures={g.name: g.value for g in gates},
    )
    if state.objective == "latency" and trial.passed:
        timing = performance.latency(sessions, state.inputs.feeds[0], LATENCY_RUNS)
        trial.latency_ratio = timing["ratio"]
    trial.seconds = time.perf_counter() - started
    state.configs[label] = candidate
    state.trials.append(trial)
    state.on_trial(trial)
    return trial


def _not_run(state: SearchState, trial: Trial) -> Trial:
    """A candidate the time budget left untried: listed as such (no size, never chosen)."""
    state.trials.append(trial)
    state.on_trial(trial)
    return trial


def _calibration_capped(cfg: PipelineConfig) -> PipelineConfig:
    """`cfg` with every recovering pass on at most SEARCH_CALIBRATION_SAMPLES samples."""
    plain = cfg.model_dump(by_alias=True, exclude_unset=True)
    for entry in plain["passes"]:
        if entry.get("calibration") is not None:
            entry["calibration_samples"] = min(
                entry.get("calibration_samples", SEARCH_CALIBRATION_SAMPLES),
                SEARCH_CALIBRATION_SAMPLES,
            )
    return PipelineConfig.model_validate(plain)


def _within_margin(cfg: PipelineConfig, report: RunReport, gates: list[Any]) -> bool:
    """Whether a candidate keeps the search's own margin (see SEARCH_MIN_SQNR_DB); always true
    when the accuracy budget was measured or the config sets its own floor."""
    accuracy_measured = any(g.name == "max_accuracy_drop" and g.value is not None for g in gates)
    own_floor = cfg.validation.min_sqnr is not None or cfg.validation.min_top1_agreement is not None
    if accuracy_measured or own_floor or report.validation is None:
        return True
    for metrics in report.validation.outputs.values():
        if metrics.get("recurrent_state_of"):
            continue
        top1 = metrics.get("top1_agreement")
        judged_by_top1 = top1 is not None and metrics.get("original_classes_predicted") != 1
        if judged_by_top1 and not top1 >= SEARCH_MIN_TOP1:
            return False
        if not judged_by_top1 and not metrics["sqnr_db"] >= SEARCH_MIN_SQNR_DB:
            return False
    return True
