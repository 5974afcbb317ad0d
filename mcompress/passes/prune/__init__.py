"""`prune`: zero the smallest-magnitude weights, or remove whole channels (`structured: true`).

Unstructured pruning writes dense arrays with zeros; `mcompress.encoding` stores them compactly
at save, so the file shrinks. Weights are found by the op and input slot that read them, in every
graph, so a main-graph initializer used by a Conv inside an `If` branch is pruned too.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import onnx
from pydantic import Field

from mcompress.errors import NothingToDo, PassError
from mcompress.model_io import Model, Weight
from mcompress.passes.base import PassContext, PassResult, node_excluded
from mcompress.passes.prune import structured as prune_structured
from mcompress.passes.prune.channel_groups import Key, Site, walk
from mcompress.recover.options import (
    NO_DATA_NOTE,
    RecoveryConfig,
    check_calibration,
    wants_recovery,
)

summary = "Zero the smallest-magnitude weights, or remove whole channels (structured: true)."

# Input slots holding weights (pruned) and biases (pruned only with include_biases).
WEIGHT_SLOTS: dict[str, tuple[int, ...]] = {
    "Conv": (1,),
    "ConvTranspose": (1,),
    "Gemm": (0, 1),
    "MatMul": (0, 1),
    "Gather": (0,),
    "LSTM": (1, 2),
    "GRU": (1, 2),
    "RNN": (1, 2),
}
BIAS_SLOTS: dict[str, tuple[int, ...]] = {
    "Conv": (2,),
    "ConvTranspose": (2,),
    "Gemm": (2,),
    "LSTM": (3,),
    "GRU": (3,),
    "RNN": (3,),
}
_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
_UNSTRUCTURED_ONLY = ("scope", "min_elements", "include_biases", "n_m")
_STRUCTURED_ONLY = ("round_to",)
_CRITERIA = {True: ("l1", "l2"), False: ("magnitude", "wanda", "sparsegpt")}


class Config(RecoveryConfig):
    """Options of the prune pass (YAML `{type: prune, ...}`)."""

    type: Literal["prune"] = "prune"
    sparsity: float = Field(
        0.5, gt=0, lt=1, description="fraction of weights (or channels) to remove"
    )
    scope: Literal["layer", "global"] = Field(
        "layer", description="one magnitude threshold per tensor, or one across all of them"
    )
    min_elements: int = Field(1024, ge=0, description="leave tensors smaller than this alone")
    include_biases: bool = Field(False, description="also prune Conv/Gemm/RNN biases")
    exclude: tuple[str, ...] = Field(
        (), description="node names (globs), op types or weight names to leave alone"
    )
    structured: bool = Field(False, description="remove whole output channels")
    criterion: Literal["l1", "l2", "magnitude", "wanda", "sparsegpt"] | None = Field(
        None,
        description="structured: channel ranking norm l1 (default) or l2; unstructured: "
        "magnitude (default without calibration), wanda (|W| x input norm) or sparsegpt "
        "(second-order, default with calibration); the last two need calibration data",
    )
    n_m: str | None = Field(
        None,
        pattern=r"^\d+:\d+$",
        description="N:M pattern, e.g. '2:4': N of every M consecutive input weights removed "
        "(unstructured, with calibration)",
    )
    round_to: int = Field(
        4,
        ge=1,
        description="keep channel counts multiples of this (onnxruntime's fast CPU convolutions "
        "need multiples of 4)",
    )


def check(model: Model, cfg: Config) -> None:
    """Refuse option mixes that do not apply, and models with nothing prunable."""
    for key in _STRUCTURED_ONLY if not cfg.structured else _UNSTRUCTURED_ONLY:
        if key in cfg.model_fields_set:
            need = "structured: true" if key in _STRUCTURED_ONLY else "unstructured pruning"
            raise PassError(f"prune option '{key}' applies only to {need}")
    if cfg.criterion is not None and cfg.criterion not in _CRITERIA[cfg.structured]:
        kind = "structured" if cfg.structured else "unstructured"
        raise PassError(
            f"criterion '{cfg.criterion}' does not apply to {kind} pruning",
            f"use one of: {', '.join(_CRITERIA[cfg.structured])}",
        )
    needs_data = cfg.criterion in ("wanda", "sparsegpt") or cfg.n_m is not None
    if needs_data and not wants_recovery(cfg):
        what = f"criterion '{cfg.criterion}'" if cfg.criterion else "n_m"
        raise PassError(
            f"{what} needs calibration data and recover: true",
            "pass --calibration FILE.npz (or calibration: random)",
        )
    check_calibration(cfg)
    ops = {node.op_type for graph in model.graphs() for node in graph.node}
    wanted = set(prune_structured.LAYER_OPS if cfg.structured else WEIGHT_SLOTS)
    if not ops & wanted:
        raise NothingToDo(
            "nothing to prune: the model has no " + ", ".join(sorted(wanted)) + " layer"
        )


def apply(model: Model, cfg: Config, ctx: PassContext) -> PassResult:
    """Prune in place; stats list every tensor touched and every tensor skipped, with why."""
    if cfg.structured:
        return prune_structured.apply(model, cfg, ctx)
    if wants_recovery(cfg):
        from mcompress.passes.prune import recovered as prune_recovered

        return prune_recovered.apply(model, cfg, ctx)
    candidates, skipped = find_candidates(model, cfg.min_elements, cfg.include_biases, cfg.exclude)
    counts = layer_counts(candidates, cfg)
    tensors = []
    for done, (cand, k) in enumerate(zip(candidates, counts, strict=True)):
        ctx.progress("prune", done, len(candidates))
        tensors.append(prune_tensor(cand, k))
    ctx.progress("prune", len(candidates), len(candidates))
    totals = totals_of(tensors)
    notes = [] if tensors else ["prune: no weight was large enough to prune (see skipped)"]
    if cfg.recover and tensors:
        notes.append(NO_DATA_NOTE.format(name="prune"))
    stats: dict[str, Any] = {
        "mode": "unstructured",
        "criterion": "magnitude",
        "scope": cfg.scope,
        "target_sparsity": cfg.sparsity,
        "totals": totals,
        "tensors": tensors,
        "skipped": skipped,
    }
    return PassResult(
        modified=totals["zeros_after"] > totals["zeros_before"], stats=stats, notes=notes
    )


def layer_counts(candidates: list[Candidate], cfg: Config) -> list[int]:
    """Weights to remove per candidate: one share per tensor, or one global threshold."""
    if cfg.scope == "global":
        return global_counts([c.weight for c in candidates], cfg.sparsity)
    return [int(round(cfg.sparsity * c.weight.size)) for c in candidates]


# ---------------------------------------------------------------- which tensors


@dataclass
class Candidate:
    """A weight to prune, where it is (`key`: graph index, name) and the ops that read it."""

    weight: Weight
    key: Key
    ops: list[str] = field(default_factory=list)


def find_candidates(
    model: Model,
    min_elements: int,
    include_biases: bool = False,
    exclude: tuple[str, ...] | list[str] = (),
) -> tuple[list[Candidate], list[dict[str, str]]]:
    """Float initializers read only as layer weights (or biases), with reasons for the rest."""
    uses: dict[Key, list[tuple[Site, int]]] = {}
    weights: dict[Key, Weight] = {}
    for site in walk(model):
        for slot in range(len(site.node.input)):
            init = site.const(slot)
            if init is not None and init.weight.tensor.data_type in _FLOATS:
                uses.setdefault(init.key, []).append((site, slot))
                weights[init.key] = init.weight
    candidates: list[Candidate] = []
    skipped: list[dict[str, str]] = []
    for key, sites in uses.items():
        weight = weights[key]
        roles = [_role(site.node, slot, include_biases) for site, slot in sites]
        if not any(roles):
            continue
        reason = None
        if not all(roles):
            site, slot = next(u for u, r in zip(sites, roles, strict=True) if not r)
            reason = f"also read by {site.node.op_type} '{site.node.name}' (input {slot})"
        elif any(node_excluded(s.node, exclude) for s, _ in sites) or any(
            fnmatch.fnmatchcase(weight.name, p) for p in exclude
        ):
            reason = "excluded"
        elif weight.size < max(min_elements, 1):
            reason = f"{weight.size} elements < min_elements {min_elements}"
        if reason:
            skipped.append({"name": weight.name, "reason": reason})
        else:
            candidates.append(Candidate(weight, key, sorted({s.node.op_type for s, _ in sites})))
    return candidates, skipped


def _role(node: onnx.NodeProto, slot: int, include_biases: bool) -> bool:
    if node.domain not in ("", "ai.onnx"):
        return False
    if slot in WEIGHT_SLOTS.get(node.op_type, ()):
        return True
    return include_biases and slot in BIAS_SLOTS.get(node.op_type, ())


# ---------------------------------------------------------------- magnitude pruning


def smallest_mask(magnitudes: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of exactly `k` smallest entries of a 1-D array; ties go to lower indices.

    Equals taking the first `k` of a stable argsort, without sorting: partition finds the k-th
    value, everything below it is taken, then just enough entries equal to it.
    """
    n = magnitudes.size
    k = max(0, min(k, n))
    if k == 0:
        return np.zeros(n, bool)
    threshold = np.partition(magnitudes, k - 1)[k - 1]
    mask = magnitudes <= threshold
    if np.count_nonzero(mask) == k:  # no ties at the threshold: one pass fewer
        return mask
    np.less(magnitudes, threshold, out=mask)
    ties = np.flatnonzero(magnitudes == threshold)[: k - int(np.count_nonzero(mask))]
    mask[ties] = True
    return mask


def zero_smallest(values: np.ndarray, k: int) -> np.ndarray:
    """A copy of `values` with its `k` smallest-magnitude entries set to zero."""
    out = np.array(values, copy=True)
    flat = out.reshape(-1)
    flat[smallest_mask(np.abs(flat), k)] = 0
    return out


def global_counts(weights: list[Weight], sparsity: float) -> list[int]:
    """How many entries of each tensor one global magnitude threshold removes (exact total)."""
    if not weights:
        return []
    magnitudes = np.concatenate(
        [np.abs(np.asarray(w.array(), dtype=np.float32)).reshape(-1) for w in weights]
    )
    total = int(round(sparsity * magnitudes.size))
    mask = smallest_mask(magnitudes, total)
    bounds = np.cumsum([0, *(w.size for w in weights)])
    return [int(mask[a:b].sum()) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def prune_tensor(cand: Candidate, k: int) -> dict[str, Any]:
    """Zero the `k` smallest-magnitude entries of one weight; return its stats row."""
    weight = cand.weight
    values = np.asarray(weight.array())
    # Zeros have the smallest magnitudes: with k above their count, pruning adds zeros.
    if k > values.size - int(np.count_nonzero(values)):
        pruned = zero_smallest(values, k)
        weight.replace(pruned)
    else:
        pruned = values
    return tensor_row(cand, values, pruned)


def tensor_row(cand: Candidate, values: np.ndarray, pruned: np.ndarray) -> dict[str, Any]:
    """The stats row of one pruned weight."""
    weight = cand.weight
    zeros_before = values.size - int(np.count_nonzero(values))
    zeros_after = pruned.size - int(np.count_nonzero(pruned))
    return {
        "name": weight.name,
        "ops": cand.ops,
        "shape": list(weight.shape),
        "elements": weight.size,
        "zeros_before": zeros_before,
        "zeros_after": zeros_after,
        "sparsity": zeros_after / max(weight.size, 1),
        "bytes_before": int(values.nbytes),
    }


def totals_of(tensors: list[dict[str, Any]]) -> dict[str, Any]:
    elements = sum(t["elements"] for t in tensors)
    zeros_after = sum(t["zeros_after"] for t in tensors)
    return {
        "tensors": len(tensors),
        "elements": elements,
        "zeros_before": sum(t["zeros_before"] for t in tensors),
        "zeros_after": zeros_after,
        "sparsity": zeros_after / max(elements, 1),
        "bytes_before": sum(t["bytes_before"] for t in tensors),
    }
