"""Distillation numerics (pure numpy): fit a student layer to the teacher's layer output, and
fit the classifier layer to the teacher's softened outputs by gradient descent.

Matrices are `[groups, rows, inputs(+1)]` as in `mcompress.recover.layers`. A weight keeps the
form an earlier pass gave it: its zeros stay zero (pruned) and a weight with few distinct
values keeps them (clustered: assigned with error feedback, then the shared values re-fitted).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mcompress.recover import solve
from mcompress.recover.layers import Layer
from mcompress.recover.stats import patches


def storage(mats: np.ndarray, cols: np.ndarray) -> str:
    """How an earlier pass left a weight: `clustered` (at most SHARED_VALUES distinct non-zero
    values, each used twice on average at least), `pruned` (exact zeros) or `float`."""
    core = mats[..., cols]
    nonzero = core[core != 0]
    distinct = np.unique(nonzero).size
    if distinct <= solve.SHARED_VALUES and 2 * distinct <= nonzero.size:
        return "clustered"
    return "pruned" if bool(np.any(core == 0)) else "float"


def output_rows(layer: Layer, y: np.ndarray) -> np.ndarray:
    """A layer's output `[N, C, *spatial]` (Conv) or `[..., C]` as `[groups, rows, C/groups]`,
    rows in the order `patches` gives the layer's input rows."""
    y = np.asarray(y, dtype=np.float32)
    if layer.kind == "conv":
        flat = np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])
        return flat.reshape(flat.shape[0], layer.groups, -1).transpose(1, 0, 2)
    return y.reshape(1, -1, y.shape[-1])


@dataclass
class TargetStats:
    """Statistics of a student layer's input x against the teacher's layer output y, summed
    over calibration batches: H = Σ x xᵀ, C = Σ x yᵀ, and Σ ||y||²."""

    hcc: np.ndarray | None = None
    cross: np.ndarray | None = None
    energy: float = 0.0

    def add(self, layer: Layer, x: np.ndarray, y: np.ndarray) -> None:
        """Add one batch: the student layer's input `x` and the teacher's output `y`."""
        px = patches(layer, x)
        py = output_rows(layer, y)
        if px.shape[1] != py.shape[1]:
            raise ValueError(f"{px.shape[1]} input rows against {py.shape[1]} output rows")
        h = np.stack([px[g].T @ px[g] for g in range(px.shape[0])]).astype(np.float64)
        c = np.stack([px[g].T @ py[g] for g in range(px.shape[0])]).astype(np.float64)
        self.hcc = h if self.hcc is None else self.hcc + h
        self.cross = c if self.cross is None else self.cross + c
        self.energy += float(np.sum(np.square(py, dtype=np.float64)))

    def error(self, mats: np.ndarray) -> float:
        """Relative squared error ||Ŵ x - y||² / ||y||² over the batches added."""
        assert self.hcc is not None and self.cross is not None
        quad = np.einsum("grd,gde,gre->", mats, self.hcc, mats)
        lin = np.einsum("grd,gdr->", mats, self.cross)
        return float(max(quad - 2 * lin + self.energy, 0.0) / max(self.energy, 1e-30))


def ls_fit(mats: np.ndarray, stats: TargetStats, ridge: float = solve.RIDGE) -> np.ndarray:
    """argmin ||Ŵ x - y||² + λ||Ŵ - W||², λ = ridge x mean diag(H): pulled towards the current
    weights where the calibration data says little."""
    assert stats.hcc is not None and stats.cross is not None
    h = solve.damped(stats.hcc, ridge)
    lam = np.einsum("gii->gi", h - stats.hcc)
    rhs = stats.cross + lam[..., None] * mats.transpose(0, 2, 1)
    return np.linalg.solve(h, rhs).transpose(0, 2, 1)


def fit_layer(mats: np.ndarray, cols: np.ndarray, stats: TargetStats) -> np.ndarray:
    """The layer's new matrices in the same storage form as `mats` (see `storage`)."""
    assert stats.hcc is not None
    target = ls_fit(mats, stats)
    form = storage(mats, cols)
    if form == "float":
        return target
    h = solve.damped(stats.hcc)
    zero = (mats == 0) & cols
    if form == "pruned":
        return solve.refit_masked(target, h, zero)
    return _fit_codebook(mats, cols, target, h, zero)


def _fit_codebook(
    mats: np.ndarray, cols: np.ndarray, target: np.ndarray, h: np.ndarray, zero: np.ndarray
) -> np.ndarray:
    """Clustered weights: each weight snapped to the existing shared values with GPTQ-style
    error feedback, then the shared values re-fitted to the output error (zeros stay)."""
    book = np.unique(mats[..., cols])
    book = book[book != 0] if np.any(book != 0) else book

    def snap(column: np.ndarray, col: int) -> np.ndarray:
        return nearest(column, book)

    swept = solve.obs_sweep(target, h, prunable=cols, fixed_zero=zero, quantize=snap)
    codes = np.zeros(swept.shape, np.int64)
    codes[..., cols] = np.abs(swept[..., cols, None] - book).argmin(axis=-1)
    frozen = zero | ~cols[None, None, :]
    values = solve.codebook_refit(target, h, codes, book, frozen, swept)
    out = swept.copy()
    out[..., cols] = np.where(zero[..., cols], 0.0, values[codes[..., cols]])
    return out


def fit_on_grid(
    mats: np.ndarray,
    cols: np.ndarray,
    stats: TargetStats,
    grid: tuple[np.ndarray, np.ndarray, int, int],
) -> np.ndarray:
    """A quantized layer's new matrices on its grid (scale and zero point matrices shaped like
    `mats`, code range low..high): the least-squares target rounded column by column with the
    error spread over the columns not yet rounded (GPTQ). A weight that is mostly zero (pruned,
    then quantized) keeps its zeros."""
    assert stats.hcc is not None
    scale, zero, low, high = grid
    target = ls_fit(mats, stats)
    zeros = (mats == 0) & cols
    fixed = zeros if zeros[..., cols].mean() >= PRUNED_SHARE else None

    def snap(column: np.ndarray, col: int) -> np.ndarray:
        s, z = scale[..., col], zero[..., col]
        return (np.clip(np.rint(column / s) + z, low, high) - z) * s

    h = solve.damped(stats.hcc)
    return solve.obs_sweep(target, h, prunable=cols, fixed_zero=fixed, quantize=snap)


# A quantized weight with at least this share of zero codes was pruned first: zeros stay.
PRUNED_SHARE = 0.3


def nearest(values: np.ndarray, book: np.ndarray) -> np.ndarray:
    """Each value replaced by the closest entry of the sorted codebook `book`."""
    idx = np.clip(np.searchsorted(book, values), 1, max(book.size - 1, 1))
    lo, hi = book[idx - 1], book[np.minimum(idx, book.size - 1)]
    return np.where(np.abs(values - lo) <= np.abs(values - hi), lo, hi)


# ---------------------------------------------------------------- classifier distillation


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def kl(teacher_log: np.ndarray, student_log: np.ndarray, temperature: float = 1.0) -> float:
    """Mean KL(teacher_T ‖ student_T) over samples, from log-probabilities (or logits)."""
    lt = log_softmax(teacher_log / temperature)
    ls = log_softmax(student_log / temperature)
    return float(np.mean(np.sum(np.exp(lt) * (lt - ls), axis=-1)))


@dataclass
class HeadData:
    """A classifier layer's inputs (patch rows, one per sample), the teacher's log-probabilities
    and the hard labels, for the samples fitted on or held out."""

    x: np.ndarray  # [n, d]
    teacher: np.ndarray  # [n, classes]
    labels: np.ndarray | None = None


@dataclass
class KDOptions:
    """Temperature, the weight of the soft loss against hard labels, steps, checks."""

    temperature: float = 3.0
    alpha: float = 0.7
    steps: int = 300
    check_every: int = 10
    patience: int = 5


@dataclass
class KDResult:
    """The fitted rows (the best held-out KL's), the held-out KL (T=1) at each check, the
    steps run and the step whose weights were kept."""

    w: np.ndarray
    held_kl: list[float] = field(default_factory=list)
    steps: int = 0
    best_step: int = 0


def kd_gradient(
    w: np.ndarray, offset: np.ndarray, data: HeadData, opts: KDOptions
) -> tuple[float, np.ndarray]:
    """Loss alpha·T²·KL(teacher_T ‖ student_T) + (1-alpha)·CE(labels) and its gradient in w
    (`[classes, d]`, logits = x wᵀ + offset). Without labels alpha is 1."""
    t = opts.temperature
    alpha = opts.alpha if data.labels is not None else 1.0
    z = data.x @ w.T + offset
    lt = log_softmax(data.teacher / t)
    ls = log_softmax(z / t)
    loss = alpha * t * t * float(np.mean(np.sum(np.exp(lt) * (lt - ls), axis=-1)))
    gz = alpha * t * (np.exp(ls) - np.exp(lt))
    if data.labels is not None and alpha < 1:
        lp = log_softmax(z)
        picked = lp[np.arange(len(z)), data.labels]
        loss += (1 - alpha) * float(-np.mean(picked))
        onehot = np.zeros_like(z)
        onehot[np.arange(len(z)), data.labels] = 1
        gz += (1 - alpha) * (np.exp(lp) - onehot)
    return loss, gz.T @ data.x / len(z)


def kd_fit(
    w0: np.ndarray,
    offset: np.ndarray,
    fit: HeadData,
    held: HeadData,
    opts: KDOptions,
    frozen: np.ndarray | None = None,
) -> KDResult:
    """Nesterov gradient descent from `w0`; step 1/L with L = ½ λmax(XᵀX/n) (the loss's
    curvature in the logits is at most ½). `frozen` weights (pruned) stay as they are. Stops
    when the held-out KL has not fallen for `patience` checks; returns the best weights."""
    gram = fit.x.T @ fit.x / max(len(fit.x), 1)
    lipschitz = 0.5 * float(np.linalg.eigvalsh(gram)[-1]) if gram.size else 1.0
    lr = 1.0 / max(lipschitz, 1e-12)
    keep = np.ones_like(w0) if frozen is None else (~frozen).astype(w0.dtype)
    w, prev = w0.copy(), w0.copy()
    best = KDResult(w0.copy(), [kl(held.teacher, held.x @ w0.T + offset)])
    best_kl, stale = best.held_kl[0], 0
    for step in range(1, opts.steps + 1):
        look = w + (step - 1) / (step + 2) * (w - prev)
        _, grad = kd_gradient(look, offset, fit, opts)
        prev, w = w, look - lr * grad * keep
        if step % opts.check_every and step != opts.steps:
            continue
        current = kl(held.teacher, held.x @ w.T + offset)
        best.held_kl.append(current)
        best.steps = step
        if current < best_kl - 1e-9:
            best.w, best_kl, stale, best.best_step = w.copy(), current, 0, step
        else:
            stale += 1
            if stale >= opts.patience:
                break
    return best
