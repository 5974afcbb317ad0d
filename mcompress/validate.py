"""Validation of a compressed model against its original: both run in onnxruntime on the same
inputs; fidelity per output and overall, task accuracy with labels, latency and peak memory.

"Overall" is the worst output (largest error, lowest cosine/SQNR/agreement), so a gate on it
holds for every output. Gates whose metric could not be measured fail, with a note saying why:
a CI gate that silently passes is worse than one that asks for data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mcompress import fidelity, model_io, performance, processes, runtime
from mcompress.config import ValidateConfig
from mcompress.errors import DataError, McompressError, ModelError
from mcompress.inputs import InputSet, make_feeds
from mcompress.model_server import ServedSession
from mcompress.report import Gate, RunReport
from mcompress.session_pair import ONE_AT_A_TIME_NOTE, SessionPair

Progress = Callable[[str, int, int], None]
CONFIDENT_MARGIN = 0.2
_ALL_SAMPLES = 10**9
ROLES = ("original", "compressed")


@dataclass
class Validation:
    """The report's `validation` section: the compressed model's outputs against the original's
    on the same inputs (per output and worst overall), the fidelity floor, task accuracy with
    labels, latency and peak memory. Nested figures are plain mappings (see the README)."""

    inputs: dict[str, Any] = field(default_factory=dict)  # data file or random, guessed sizes
    samples: int = 0
    outputs: dict[str, Any] = field(default_factory=dict)  # name -> output_metrics(...)
    overall: dict[str, Any] = field(default_factory=dict)  # the worst output's figures
    floor: dict[str, Any] | None = None  # floor_section
    task: dict[str, Any] | None = None  # accuracy with labels (_task)
    latency: dict[str, Any] | None = None  # performance.latency
    memory: dict[str, Any] | None = None  # performance.memory
    notes: list[str] = field(default_factory=list)


def validate_pair(
    original: Path,
    compressed: Path,
    cfg: ValidateConfig,
    progress: Progress,
    disk_bytes: int | None = None,
) -> Validation | None:
    """Run both models on the same inputs and measure how far apart they are. `disk_bytes`:
    both models' files and external data, when the caller has measured them."""
    if not cfg.enabled:
        return None
    if disk_bytes is None:
        disk_bytes = sum(model_io.disk_size(path) for path in (original, compressed))
    alone = not performance.side_by_side(disk_bytes)
    inputs = feeds_for(Path(original), cfg)
    processes.release_freed_memory()  # what the pass and the input sizes' probes freed
    sessions = open_sessions(Path(original), Path(compressed), alone)
    try:
        samples = len(inputs.feeds)
        total = samples + cfg.latency_runs
        found = compare_outputs(sessions, inputs, cfg, lambda i: progress("validating", i, total))
        if sessions.alone:
            found.notes.append(ONE_AT_A_TIME_NOTE)
        found.memory = performance.memory(sessions)
        found.latency = performance.latency_of_samples(sessions, inputs.feeds, cfg.latency_runs)
        if found.latency is None:
            found.latency = performance.latency(
                sessions, inputs.feeds[0], cfg.latency_runs,
                lambda i: progress("validating", samples + i, total),
            )  # fmt: skip
        progress("validating", total, total)
        if not inputs.synthetic:
            found.latency["data_batch"] = performance.batch_latency(
                sessions, inputs.feeds, cfg.latency_runs, found.notes
            )
    finally:
        sessions.close()
    return found


def feeds_for(original: Path, cfg: ValidateConfig) -> InputSet:
    """The validation inputs `cfg` asks for (all of a data file unless `samples` is set)."""
    samples = cfg.samples if (cfg.data is None or "samples" in cfg.model_fields_set) else None
    return make_feeds(
        Path(original),
        data=Path(cfg.data) if cfg.data else None,
        samples=samples or _ALL_SAMPLES,
        seed=cfg.seed,
        input_shapes={k: tuple(v) for k, v in cfg.input_shapes.items()},
    )


def open_sessions(original: Path, compressed: Path, alone: bool = False) -> SessionPair:
    """Both models' sessions, each served by its own process (one at a time if `alone`); one
    that does not load: ModelError; onnxruntime crashing: `model_server.crash_error`. Held
    together, the original loads once the compressed model has: a packed model's load peak
    (onnxruntime folding its weights back, 0.7 GB on a pruned 90 MB encoder) then does not
    add up with the original's."""
    served: dict[int, ServedSession] = {}

    def load(k: int) -> ServedSession:
        wait = None if alone or k == 1 else (lambda: served[1].get_inputs())
        served[k] = ServedSession((original, compressed)[k], ROLES[k], wait)
        return served[k]

    return SessionPair(load, alone)


def compare_outputs(
    sessions: SessionPair,
    inputs: InputSet,
    cfg: ValidateConfig,
    tick: Callable[[int], None] = lambda i: None,
) -> Validation:
    """Fidelity per output and overall, the floor, task accuracy with labels, and notes (no
    latency or memory)."""
    names, pairs, notes = _outputs(sessions)
    notes[:0] = inputs.description.get("notes", [])
    results, states = _run_all(sessions, pairs, inputs.feeds, tick)
    outputs = {
        name: output_metrics(results[0][k], results[1][k], name) for k, name in enumerate(names)
    }
    for out, inp in states.items():
        outputs[out]["recurrent_state_of"] = inp
        notes.append(
            f"'{out}' is recurrent state fed back to '{inp}': the samples ran as one sequence, "
            f"each model fed its own '{out}', and it is judged through the other outputs"
        )
    task = None
    if inputs.labels is not None:
        task = _task(names, results, inputs.labels)
        if task is None:
            notes.append("labels given, but no output looks like class scores; no accuracy")
    return Validation(
        inputs=inputs.description,
        samples=len(inputs.feeds),
        outputs=outputs,
        overall=overall(outputs),
        floor=floor_section(cfg, outputs, synthetic=inputs.synthetic),
        task=task,
        notes=notes,
    )


# ---------------------------------------------------------------- onnxruntime


def load_session(path: Path, role: str = "compressed") -> Any:
    """A session for judging a model; one that does not load is a one-line ModelError."""
    try:
        # Idle worker threads sleep instead of spinning: a spinning pool steals the CPU from
        # the other model's run in the interleaved latency measurement.
        return runtime.session(path, spinning=False)
    except Exception as exc:  # noqa: BLE001 - any load failure is reported as one line
        raise ModelError(
            f"{role} model '{path}' does not load in onnxruntime: {runtime.error_line(exc)}"
        ) from None


def _outputs(sessions: SessionPair) -> tuple[list[str], list[list[str]], list[str]]:
    """Output names to compare, each model's names in that order, and notes. Both models must
    take the same named inputs (the same feeds go to both) and have as many outputs."""
    inputs = [[i.name for i in session.get_inputs()] for session in sessions]
    if set(inputs[0]) != set(inputs[1]):
        raise ModelError(
            f"the models have different inputs: original {inputs[0]}, compressed {inputs[1]}"
        )
    first = [o.name for o in sessions[0].get_outputs()]
    second = [o.name for o in sessions[1].get_outputs()]
    if len(first) != len(second):
        raise ModelError(
            f"the models have different outputs: original {first}, compressed {second}"
        )
    if set(first) == set(second):
        return first, [first, first], []
    return first, [first, second], [f"output names differ; compared by position: {second}"]


def _run_all(
    sessions: SessionPair,
    pairs: list[list[str]],
    feeds: list[dict[str, np.ndarray]],
    tick: Callable[[int], None],
) -> tuple[list[list[list[np.ndarray]]], dict[str, str]]:
    """results[model][output][sample] for both models over every feed, and the recurrent
    state outputs ({output: input}). A state input left at zeros (not given by the data) is
    fed each model's own state from the previous sample, so the feeds run as one sequence and
    an error in the state shows in the outputs it feeds (`_schedule` gives the order)."""
    results: list[list[list[np.ndarray]]] = [[[] for _ in pairs[0]] for _ in sessions]
    states: dict[str, str] | None = None
    for done, (which, i) in enumerate(_schedule(sessions, len(feeds))):
        role, session, feed = ROLES[which], sessions[which], feeds[i]
        own = dict(feed)
        for out, inp in (states or {}).items():
            if i and not own[inp].any():
                own[inp] = results[which][pairs[0].index(out)][-1]
        own = runtime.typed_feed(session, own)
        for k, value in enumerate(_run(session, role, own, i, pairs[which])):
            results[which][k].append(np.asarray(value))
        if states is None:
            states = fidelity.state_outputs(
                {name: list(v.shape) for name, v in feed.items() if v.dtype.kind == "f"},
                {name: list(results[which][k][0].shape) for k, name in enumerate(pairs[0])},
            )
        tick((done + 2) // 2)
    return results, states or {}


def _schedule(sessions: SessionPair, samples: int) -> list[tuple[int, int]]:
    """(model, sample) in the order they run: held together, the models take turns sample by
    sample, which goes first alternating (their run times are latency samples, see
    `performance.latency_of_samples`); one at a time, all of one model's samples first."""
    if sessions.alone:
        return [(which, i) for which in sessions.order() for i in range(samples)]
    return [(which, i) for i in range(samples) for which in ((0, 1), (1, 0))[i % 2]]


def _run(
    session: Any, role: str, feed: dict[str, np.ndarray], index: int, names: list[str]
) -> list[Any]:
    try:
        return list(session.run(names, feed))
    except McompressError:  # onnxruntime crashed in the process serving the model
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types
        raise DataError(
            f"the {role} model failed on sample {index}: {runtime.error_line(exc)}",
            "pin dynamic shapes with --input-shape or pass real inputs with --data",
        ) from None


# ---------------------------------------------------------------- fidelity


def output_metrics(
    original: list[np.ndarray], compressed: list[np.ndarray], name: str = ""
) -> dict[str, Any]:
    """Errors of one output over all samples; top-1 agreement when it holds class scores."""
    a = np.concatenate([np.asarray(x, np.float64).reshape(-1) for x in original])
    b = np.concatenate([np.asarray(x, np.float64).reshape(-1) for x in compressed])
    if a.shape != b.shape:
        raise ModelError(
            f"an output has {b.size} values in the compressed model but {a.size} in the original"
        )
    finite = np.isfinite(a) & np.isfinite(b)
    diff = np.abs(a[finite] - b[finite])
    # Non-finite values the original does not have make the outputs incomparable.
    broken = bool((np.isfinite(a) & ~np.isfinite(b)).any())
    metrics: dict[str, Any] = {
        "shape": list(np.shape(original[0])),
        "max_abs_error": math.inf if broken else (float(diff.max()) if diff.size else 0.0),
        "mean_abs_error": math.inf if broken else (float(diff.mean()) if diff.size else 0.0),
        "cosine": math.nan if broken else cosine(a[finite], b[finite]),
        "sqnr_db": -math.inf if broken else fidelity.sqnr_db(a[finite], b[finite]),
        "relative_l2_error": math.inf if broken else fidelity.relative_l2(a[finite], b[finite]),
        "nan_count": int(np.isnan(b).sum()),
        "inf_count": int(np.isinf(b).sum()),
        "original_nan_count": int(np.isnan(a).sum()),
        "original_inf_count": int(np.isinf(a).sum()),
    }
    if fidelity.is_class_scores(original, name):
        metrics.update(agreement(original, compressed))
    elif fidelity.is_probability_map(original):
        metrics.update(fidelity.map_agreement(original, compressed))
    return metrics


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two flat vectors; 1 when both are all zeros."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


def might_be_class_scores(value: np.ndarray) -> bool:
    """A [batch, classes] (or [classes]) float output with at least two classes: with labels
    given, the first such output is scored for accuracy."""
    return value.dtype.kind == "f" and value.ndim in (1, 2) and value.shape[-1] >= 2


def probabilities(scores: np.ndarray) -> np.ndarray:
    """Rows of `scores` as probabilities: kept if they already are, else softmax."""
    rows = np.asarray(scores, np.float64)
    if rows.min() >= 0 and rows.max() <= 1 and np.allclose(rows.sum(axis=1), 1, atol=1e-3):
        return rows
    shifted = np.exp(rows - rows.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def agreement(original: list[np.ndarray], compressed: list[np.ndarray]) -> dict[str, Any]:
    """Top-1 agreement over all rows, and over rows where the original is confident
    (top-1 minus top-2 probability above CONFIDENT_MARGIN)."""
    classes = int(np.shape(original[0])[-1])
    a = np.concatenate([np.asarray(x).reshape(-1, classes) for x in original])
    b = np.concatenate([np.asarray(x).reshape(-1, classes) for x in compressed])
    same = a.argmax(axis=1) == b.argmax(axis=1)
    top2 = np.sort(probabilities(a), axis=1)[:, -2:]
    confident = (top2[:, 1] - top2[:, 0]) > CONFIDENT_MARGIN
    return {
        "classes": classes,
        "top1_agreement": float(same.mean()),
        "original_classes_predicted": int(np.unique(a.argmax(axis=1)).size),
        "top1_agreement_confident": float(same[confident].mean()) if confident.any() else None,
        "confident_rows": int(confident.sum()),
    }


def overall(outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The worst value of each metric over the outputs judged directly (recurrent state is
    judged through the outputs it feeds); NaN/inf counts over every output."""
    judged = [m for m in outputs.values() if not m.get("recurrent_state_of")]
    judged = judged or list(outputs.values())

    def pick(key: str, worst: Callable[..., Any]) -> Any:
        values = [m[key] for m in judged if m.get(key) is not None]
        if any(math.isnan(v) for v in values):
            return math.nan
        return worst(values) if values else None

    return {
        "max_abs_error": pick("max_abs_error", max),
        "mean_abs_error": pick("mean_abs_error", max),
        "cosine": pick("cosine", min),
        "sqnr_db": pick("sqnr_db", min),
        "relative_l2_error": pick("relative_l2_error", max),
        "nan_count": sum(m["nan_count"] for m in outputs.values()),
        "inf_count": sum(m["inf_count"] for m in outputs.values()),
        "top1_agreement": pick("top1_agreement", min),
        "top1_agreement_confident": pick("top1_agreement_confident", min),
    }


def floor_section(
    cfg: ValidateConfig, outputs: dict[str, dict[str, Any]], synthetic: bool
) -> dict[str, Any]:
    """The fidelity floor (defaults for random or real inputs, or the configured thresholds)
    and its check on each judged output. A configured min_sqnr judges every output that is not
    class scores by SQNR, probability maps too."""
    default = fidelity.default_floor(real_data=not synthetic)
    floor = fidelity.Floor(
        min_sqnr_db=default.min_sqnr_db if cfg.min_sqnr is None else cfg.min_sqnr,
        min_top1_agreement=(
            default.min_top1_agreement if cfg.min_top1_agreement is None else cfg.min_top1_agreement
        ),
        min_map_iou=default.min_map_iou if cfg.min_sqnr is None else None,
    )
    return {
        "inputs": "random" if synthetic else "data",
        "min_sqnr_db": floor.min_sqnr_db,
        "min_top1_agreement": floor.min_top1_agreement,
        "min_map_iou": floor.min_map_iou,
        "checks": fidelity.floor_checks(outputs, floor),
    }


# ---------------------------------------------------------------- task accuracy


def _task(
    names: list[str], results: list[list[list[np.ndarray]]], labels: np.ndarray
) -> dict[str, Any] | None:
    """Accuracy and macro precision/recall/F1 of both models on the first class-score output."""
    for k, name in enumerate(names):
        first = results[0][k][0]
        if not might_be_class_scores(first) or int(labels.max()) >= first.shape[-1]:
            continue
        preds = [
            np.concatenate(
                [np.asarray(x).reshape(-1, first.shape[-1]) for x in results[m][k]]
            ).argmax(axis=1)
            for m in (0, 1)
        ]
        if preds[0].size != labels.size:
            continue
        original, compressed = (classification_metrics(labels, p) for p in preds)
        return {
            "output": name,
            "samples": int(labels.size),
            "original": original,
            "compressed": compressed,
            "accuracy_drop": original["accuracy"] - compressed["accuracy"],
        }
    return None


def classification_metrics(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-averaged precision, recall and F1 over every class that occurs in
    the labels or the predictions (a class never predicted has precision 0)."""
    labels = np.asarray(labels).reshape(-1)
    predicted = np.asarray(predicted).reshape(-1)
    precisions, recalls, f1s = [], [], []
    for c in np.union1d(labels, predicted):
        tp = int(np.sum((predicted == c) & (labels == c)))
        predicted_c = int(np.sum(predicted == c))
        actual_c = int(np.sum(labels == c))
        p = tp / predicted_c if predicted_c else 0.0
        r = tp / actual_c if actual_c else 0.0
        precisions.append(p)
        recalls.append(r)
        f1s.append(2 * p * r / (p + r) if p + r else 0.0)
    return {
        "accuracy": float(np.mean(labels == predicted)),
        "precision": float(np.mean(precisions)),
        "recall": float(np.mean(recalls)),
        "f1": float(np.mean(f1s)),
    }


# ---------------------------------------------------------------- gates


def _figure(section: str, key: str) -> Callable[[RunReport], Any]:
    """Reads `key` of a validation section of a report (None when it was not measured)."""

    def read(report: RunReport) -> Any:
        found = getattr(report.validation, section) if report.validation else None
        return (found or {}).get(key)

    return read


_GATES: dict[str, tuple[str, str, Callable[[RunReport], Any]]] = {
    # name: (direction, what is measured, how to read it from the report)
    "max_accuracy_drop": (
        "max",
        "accuracy drop (needs --data with labels)",
        _figure("task", "accuracy_drop"),
    ),
    "min_cosine": (
        "min",
        "cosine similarity of the outputs",
        _figure("overall", "cosine"),
    ),
    "max_latency_ratio": (
        "max",
        "latency ratio compressed/original (lower end of its 95% confidence interval)",
        _figure("latency", "gate_ratio"),
    ),
    "min_compression_ratio": ("min", "compression ratio", lambda r: r.compression_ratio),
}


# The fidelity floor: gates that always apply (with default thresholds) unless gates are off.
FLOOR_GATES = {
    "min_sqnr": "sqnr_db",
    "min_top1_agreement": "top1_agreement",
    "min_map_iou": "map_iou",  # probability maps on random inputs; not an option
}


def evaluate_gates(cfg: ValidateConfig, report: RunReport) -> list[Gate]:
    """The fidelity floor, then the configured gates. A configured gate whose metric is
    unavailable fails, and a note on the report says why, unless it is listed as optional."""
    if not cfg.gates:
        report.notes.append("gates are off (--no-gates): nothing was judged, not even the floor")
        return []
    gates = []
    for name, (direction, what, read) in _GATES.items():
        threshold = getattr(cfg, name)
        if threshold is None:
            continue
        value = read(report)
        if value is None and name in cfg.optional_gates:
            report.notes.append(f"gate {name} skipped: {what} is unavailable (optional gate)")
            continue
        if value is None:
            reason = "validation was skipped" if report.validation is None else "not measured"
            report.notes.append(f"gate {name} fails: {what} is unavailable ({reason})")
            gates.append(Gate(name, threshold, None, False))
            continue
        value = float(value)
        passed = value <= threshold + 1e-9 if direction == "max" else value >= threshold - 1e-9
        gates.append(Gate(name, threshold, value, passed))
    return gates + _floor_gates(cfg, report)


def _floor_gates(cfg: ValidateConfig, report: RunReport) -> list[Gate]:
    """One gate per floor metric (SQNR, top-1 agreement) at its worst judged output. A
    threshold set explicitly fails when no output has that metric; a default one is absent."""
    floor = report.validation.floor if report.validation else None
    if report.validation is None:
        report.notes.append("not validated: the fidelity floor was not checked")
    if floor is None:
        return []
    gates = []
    for name, metric in FLOOR_GATES.items():
        checks = [c for c in floor["checks"] if c["metric"] == metric]
        if not checks:
            if getattr(cfg, name, None) is not None:
                report.notes.append(f"gate {name} fails: no output has {metric}")
                gates.append(Gate(name, getattr(cfg, name), None, False))
            continue
        worst = min(checks, key=_margin)
        gates.append(
            Gate(name, worst["threshold"], worst["value"], worst["passed"], worst["output"])
        )
    if floor["inputs"] == "random":
        report.notes.append(
            "the fidelity floor was judged on random inputs (lenient); pass --data with real "
            "inputs for a real judgement"
        )
    return gates


def _margin(check: dict[str, Any]) -> float:
    """How far a floor check is above its threshold (NaN counts as infinitely below)."""
    value = check["value"]
    return -math.inf if math.isnan(value) else value - check["threshold"]
