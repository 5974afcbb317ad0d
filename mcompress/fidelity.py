"""Fidelity metrics that offsets, near-constant outputs and class scores do not fool, and the
default floor below which a compressed model counts as broken.

Cosine similarity misled on real models: an output with a large constant offset scores ~1 however
wrong its variation is, and a near-constant probability (a VAD's speech probability on random
audio) scores 0.90 for an error of 0.0016. So the floor judges class scores by top-1 agreement
and every other output by SQNR against the original's variance around its mean, with a minimum
signal for probabilities (an error far below 0.01 cannot change a decision). On random inputs a
probability map (a text detector's map) is judged by its decisions instead (see map_agreement).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# Variance assumed at least for outputs whose values all lie in [0, 1] (probabilities): a
# standard deviation of 0.01, one hundredth of their range.
PROBABILITY_MIN_VARIANCE = 1e-4
# Class scores closer to the original's mean than to the original are a collapsed model.
COLLAPSE_SQNR_DB = 0.0
_CLASS_NAME_HINTS = ("logit", "score", "prob", "class", "cls", "softmax", "pred")
_SUM_TOLERANCE = 1e-3
# A probability map decides each value at 0.5 (text or not); an output is a map when each
# sample holds at least MAP_MIN_VALUES probabilities in a tensor of rank 3 or more.
MAP_THRESHOLD = 0.5
MAP_MIN_VALUES = 64
# Its decisions are judged only when each covers at least this share of the original's values:
# a map decided one way everywhere agrees with a model collapsed onto that decision.
MAP_MIN_SHARE = 0.01


@dataclass(frozen=True)
class Floor:
    """The fidelity every compressed model must keep unless gates are turned off."""

    min_sqnr_db: float
    min_top1_agreement: float
    # Probability maps are judged by the mean IoU of their decisions instead of SQNR (None:
    # by SQNR, like any output).
    min_map_iou: float | None = None


# Chosen from measurements (README, "Fidelity floor"): on random inputs lenient enough that
# int8 and fp16 pass on every model tried, strict enough that a collapsed output (SQNR <= 0 dB:
# no better than predicting the mean) or a classifier agreeing on fewer than half its top-1
# predictions stops. Real data (--data) lets the floor be stricter. A probability map's values
# on random images are noise around its training (the detector proxy marks 90% of a random
# image as text): 50% pruning kept SQNR 0.8 dB there but IoU 0.946 on real images, while its
# decisions on random images separate it (mean IoU 0.66) from broken ones (0.44 and below).
RANDOM_FLOOR = Floor(min_sqnr_db=1.0, min_top1_agreement=0.5, min_map_iou=0.5)
DATA_FLOOR = Floor(min_sqnr_db=6.0, min_top1_agreement=0.9)


def is_probability(values: np.ndarray) -> bool:
    """All values within [0, 1] (sigmoid or softmax outputs)."""
    return values.size > 0 and float(values.min()) >= 0.0 and float(values.max()) <= 1.0


def sqnr_db(original: np.ndarray, compressed: np.ndarray) -> float:
    """10 log10(variance of the original / mean squared error), in dB.

    Offset-insensitive: the signal is the original's variation around its mean, so a constant
    offset in the output neither hides nor creates error. For probabilities the signal is at
    least PROBABILITY_MIN_VARIANCE. Infinite when the outputs are identical.
    """
    a = np.asarray(original, np.float64).reshape(-1)
    b = np.asarray(compressed, np.float64).reshape(-1)
    noise = float(np.mean((b - a) ** 2)) if a.size else 0.0
    if noise == 0:
        return math.inf
    signal = float(np.var(a))
    if is_probability(a):
        signal = max(signal, PROBABILITY_MIN_VARIANCE)
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)


def relative_l2(original: np.ndarray, compressed: np.ndarray) -> float:
    """||compressed - original|| / ||original|| (infinite for any error on an all-zero output)."""
    a = np.asarray(original, np.float64).reshape(-1)
    b = np.asarray(compressed, np.float64).reshape(-1)
    error, norm = float(np.linalg.norm(b - a)), float(np.linalg.norm(a))
    if error == 0:
        return 0.0
    return error / norm if norm else math.inf


def is_class_scores(samples: list[np.ndarray], name: str = "") -> bool:
    """Class scores, judged conservatively: a float output of rank 1-3 with at least two
    classes on the last axis whose rows are probabilities (softmax: non-negative, sum 1) or
    log-probabilities, or whose name says scores/logits. An embedding is not class scores."""
    first = np.asarray(samples[0])
    if first.dtype.kind != "f" or first.ndim not in (1, 2, 3) or first.shape[-1] < 2:
        return False
    if any(hint in name.lower() for hint in _CLASS_NAME_HINTS):
        return True
    rows = np.concatenate([np.asarray(s, np.float64).reshape(-1, first.shape[-1]) for s in samples])
    if not np.isfinite(rows).all():
        return False
    if rows.min() >= 0 and np.allclose(rows.sum(axis=1), 1, atol=_SUM_TOLERANCE):
        return True
    return bool(rows.max() <= 0 and np.allclose(np.exp(rows).sum(axis=1), 1, atol=_SUM_TOLERANCE))


def is_probability_map(samples: list[np.ndarray]) -> bool:
    """A float output of rank 3 or more whose samples each hold at least MAP_MIN_VALUES values,
    all within [0, 1]: a sigmoid map (softmax class scores are recognised before this)."""
    first = np.asarray(samples[0])
    if first.dtype.kind != "f" or first.ndim < 3 or first[0].size < MAP_MIN_VALUES:
        return False
    return all(is_probability(np.asarray(s)) for s in samples)


def map_agreement(original: list[np.ndarray], compressed: list[np.ndarray]) -> dict[str, float]:
    """Mean IoU of a probability map's two decisions (value above MAP_THRESHOLD or not) against
    the original's over all samples, and the share of the original's values decided above."""
    a = np.concatenate([np.ravel(x) for x in original]) > MAP_THRESHOLD
    b = np.concatenate([np.ravel(x) for x in compressed]) > MAP_THRESHOLD
    ious = [_iou(a, b), _iou(~a, ~b)]
    return {"map_iou": float(np.mean(ious)), "map_positive_share": float(a.mean())}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.count_nonzero(a | b))
    return np.count_nonzero(a & b) / union if union else 1.0


def state_outputs(inputs: dict[str, list[int]], outputs: dict[str, list[int]]) -> dict[str, str]:
    """{output: input} for recurrent state: an output named after an input it feeds back
    (`state` -> `stateN`, `h` -> `h_out`, `past*` -> `present*`) with that input's shape."""
    pairs = {}
    for out_name, out_shape in outputs.items():
        for in_name, in_shape in inputs.items():
            if out_name.lower() in fed_back_names(in_name) and list(out_shape) == list(in_shape):
                pairs[out_name] = in_name
                break
    return pairs


def fed_back_names(input_name: str) -> set[str]:
    """Lower-case output names that feed an input of this name back, by exporter convention."""
    base = input_name.lower()
    names = {f"{base}n", f"{base}_out", f"{base}_n", f"next_{base}", f"new_{base}"}
    if "past" in base:
        names.add(base.replace("past", "present"))
    return names


def default_floor(real_data: bool) -> Floor:
    """The floor for validation on real data (--data) or on random inputs."""
    return DATA_FLOOR if real_data else RANDOM_FLOOR


def floor_checks(outputs: dict[str, dict[str, Any]], floor: Floor) -> list[dict[str, Any]]:
    """One check per judged output: top-1 agreement for class scores, SQNR otherwise.
    Recurrent-state outputs are judged through the outputs they feed, not here."""
    checks = []
    for name, metrics in outputs.items():
        if metrics.get("recurrent_state_of"):
            continue
        judged = [("sqnr_db", floor.min_sqnr_db)]
        if metrics.get("top1_agreement") is not None:
            judged = [("top1_agreement", floor.min_top1_agreement)]
        elif floor.min_map_iou is not None and _decides_both_ways(metrics):
            judged = [("map_iou", floor.min_map_iou)]
        if metrics.get("original_classes_predicted") == 1:
            # Every input falls in one class (the shared classifier on random inputs: class 1
            # at 0.96-0.99), so high agreement says little: a model collapsed onto that class
            # agrees 100%. Judge the scores too, leniently (COLLAPSE_SQNR_DB): random inputs
            # make even a good model's scores noisy. Low agreement still says broken: a CRNN
            # predicts blank at every step of random images, and one pruned to chance on its
            # real lines left half of those steps, at SQNR 0.9 dB.
            judged.insert(0, ("sqnr_db", min(floor.min_sqnr_db, COLLAPSE_SQNR_DB)))
        for metric, threshold in judged:
            value = metrics[metric]
            passed = not math.isnan(value) and value >= threshold
            checks.append(
                {"output": name, "metric": metric, "value": value, "threshold": threshold,
                 "passed": passed}
            )  # fmt: skip
    return checks


def _decides_both_ways(metrics: dict[str, Any]) -> bool:
    """A probability map whose original decided both ways on at least MAP_MIN_SHARE each."""
    share = metrics.get("map_positive_share")
    return share is not None and MAP_MIN_SHARE <= share <= 1 - MAP_MIN_SHARE


def describe(check: dict[str, Any]) -> str:
    """'output 'y': SQNR -4.3 dB < floor 1 dB' for a summary line."""
    if check["metric"] in ("top1_agreement", "map_iou"):
        name = "top-1 agreement" if check["metric"] == "top1_agreement" else "decision IoU"
        figure = f"{name} {check['value']:.1%}"
        limit = f"{check['threshold']:.0%}"
    else:
        figure = f"SQNR {check['value']:.1f} dB"
        limit = f"{check['threshold']:g} dB"
    relation = ">=" if check["passed"] else "<"
    return f"output '{check['output']}': {figure} {relation} floor {limit}"
