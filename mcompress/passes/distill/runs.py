"""Teacher and student runs for distillation: named tensors (intermediate or final) on
calibration batches, through `mcompress.runtime`, and the held-out agreement and KL."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from mcompress import runtime
from mcompress.errors import PassError
from mcompress.recover.distill import kl

Batch = dict[str, np.ndarray]


def tensors(
    proto: onnx.ModelProto,
    base_dir: Path,
    names: list[str],
    batches: list[Batch],
    who: str = "model",
) -> list[Batch]:
    """`names` (graph outputs or any node outputs of the main graph) for each batch; a run
    that fails is an error naming `who` (teacher or model)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    present = {o.name for o in copy.graph.output}
    for name in names:
        if name not in present:
            copy.graph.output.append(onnx.ValueInfoProto(name=name))
            present.add(name)
    wanted = sorted(set(names))
    results = []
    try:
        sess = runtime.session(copy, external_folder=base_dir, spinning=False)
        for batch in batches:
            values = sess.run(wanted, runtime.typed_feed(sess, batch))
            results.append(dict(zip(wanted, values, strict=True)))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types
        raise PassError(
            f"distill: the {who} does not run on the calibration inputs: {runtime.error_line(exc)}"
        ) from None
    return results


def joined(results: list[Batch], name: str) -> np.ndarray:
    """One tensor of every batch, concatenated along the batch axis."""
    return np.concatenate([r[name] for r in results])


def as_log_probs(y: np.ndarray) -> np.ndarray:
    """Class scores `[..., classes]` as `[samples, classes]` log-probabilities when they are
    probabilities (non-negative rows summing to 1), else as the logits they are; a single
    score is a two-class probability (in [0, 1]) or logit."""
    y = np.asarray(y, dtype=np.float64).reshape(-1, y.shape[-1])
    if y.shape[-1] == 1:  # one score: a probability (sigmoid) or a logit of two classes
        if y.min() >= 0 and y.max() <= 1:
            return np.log(np.maximum(np.concatenate([1 - y, y], axis=-1), 1e-12))
        return np.concatenate([np.zeros_like(y), y], axis=-1)
    if y.min() >= 0 and np.allclose(y.sum(axis=-1), 1.0, atol=1e-3):
        return np.log(np.maximum(y, 1e-12))
    return y


@dataclass
class Agreement:
    """Teacher-student top-1 agreement and KL(teacher ‖ student) at T=1 on held-out samples."""

    top1: float
    kl: float


def agreement(teacher: np.ndarray, student: np.ndarray) -> Agreement:
    """Agreement of two class-score arrays (log-probabilities or logits)."""
    same = float(np.mean(teacher.argmax(axis=-1) == student.argmax(axis=-1)))
    return Agreement(round(same, 6), round(kl(teacher, student), 6))
