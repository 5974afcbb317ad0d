"""Recovery algorithms on tiny layers where the exact answer is known."""

from __future__ import annotations

import numpy as np

from mcompress.recover import solve
from mcompress.recover.ridge import ROWS_PER_INPUT, held_out_ridge
from mcompress.recover.stats import GramStats, combined, output_error


def _data(rows: int = 400, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    x = r.normal(size=(rows, d)) @ r.normal(size=(d, d))  # correlated inputs, as in real layers
    x[:, -1] = 1.0  # bias column
    return x, (x.T @ x)[None]


def test_refit_recovers_a_layer_exactly_when_the_kept_weights_can_express_it() -> None:
    x, h = _data()
    truth = np.array([[0.0, 1.5, 0.0, -2.0, 0.0, 0.3], [0.7, 0.0, 0.0, 0.0, 1.1, -0.2]])
    target = truth[None]
    noisy = target + np.array([[0.4, 0, 0.3, 0, -0.2, 0], [0, 0.2, 0.5, -0.3, 0, 0]])[None]
    mask = truth[None] == 0
    fitted = solve.refit_masked(noisy, h, mask)
    # the noisy weights are not the target: re-fitting to *their* outputs under the mask is
    # exact only where it can express them; here we re-fit to the true layer's outputs
    exact = solve.refit_masked(target, h, mask)
    np.testing.assert_allclose(exact, target, atol=1e-10)
    assert np.abs(fitted - target).max() > 0.01


def test_ls_target_reproduces_original_outputs_from_shifted_inputs() -> None:
    r = np.random.default_rng(1)
    xo = r.normal(size=(500, 5))
    xo[:, -1] = 1
    xc = xo.copy()
    xc[:, :-1] = xo[:, :-1] @ np.diag([1.5, 0.5, 2.0, 1.0]) + 0.1  # scaled and shifted inputs
    w = r.normal(size=(1, 3, 5))
    hcc, hco = (xc.T @ xc)[None], (xc.T @ xo)[None]
    target = solve.ls_target(w, hcc, hco, ridge=1e-9)
    np.testing.assert_allclose(xc @ target[0].T, xo @ w[0].T, atol=1e-5)


def test_obs_sweep_prunes_exactly_the_share_and_refit_lowers_its_error() -> None:
    x, h = _data(d=33, seed=2)
    w = np.random.default_rng(3).normal(size=(1, 8, 33))
    cols = np.ones(33, bool)
    cols[-1] = False
    hd = solve.damped(h, 1e-4)
    pruned = solve.obs_sweep(w, hd, sparsity=0.5, prunable=cols)
    assert int((pruned[..., :-1] == 0).sum()) == 8 * 16
    refit = solve.refit_masked(w, hd, (pruned == 0) & cols)

    def err(v: np.ndarray) -> float:
        return float(np.sum((x @ (v[0] - w[0]).T) ** 2))

    zeroed = np.where((pruned == 0) & cols, 0.0, w)
    assert err(refit) < 0.7 * err(pruned) < 0.7 * err(zeroed)


def test_n_m_mask_keeps_two_of_every_four() -> None:
    scores = np.abs(np.random.default_rng(4).normal(size=(1, 3, 9)))
    cols = np.ones(9, bool)
    cols[-1] = False
    mask = solve.mask_by_score(scores, 0.5, cols, nm=(2, 4))
    assert mask[..., :8].reshape(1, 3, 2, 4).sum(-1).tolist() == [[[2, 2]] * 3]
    assert not mask[..., -1].any()


def test_gptq_rounding_error_below_round_to_nearest() -> None:
    x, h = _data(d=17, seed=5)
    w = np.random.default_rng(6).normal(size=(1, 6, 17))
    scale = np.abs(w[..., :-1]).max(axis=2) / 7  # 4-bit symmetric, one scale per row
    cols = np.ones(17, bool)
    cols[-1] = False

    def quantize(column: np.ndarray, _: int) -> np.ndarray:
        return np.clip(np.round(column / scale), -7, 7) * scale

    rtn = w.copy()
    rtn[..., :-1] = np.clip(np.round(w[..., :-1] / scale[..., None]), -7, 7) * scale[..., None]
    gptq = solve.obs_sweep(w, solve.damped(h, 1e-4), prunable=cols, quantize=quantize)

    def err(v: np.ndarray) -> float:
        return float(np.sum((x @ (v[0] - w[0]).T) ** 2))

    on_grid = gptq[..., :-1] / scale[..., None]
    np.testing.assert_allclose(on_grid, np.round(on_grid), atol=1e-9)
    assert err(gptq) < 0.7 * err(rtn)


def test_greedy_obs_finds_the_support_of_a_sparse_layer_and_beats_the_sweep() -> None:
    x, h = _data(d=17, seed=7)
    cols = np.ones(17, bool)
    cols[-1] = False
    r = np.random.default_rng(8)
    truth = r.normal(size=(1, 5, 17))
    truth[..., :-1][r.random(size=(1, 5, 16)).argsort(axis=2) < 8] = 0  # 8 zeros per row
    hd = solve.damped(h, 1e-9)
    mask = solve.obs_greedy(truth, hd, 0.5, cols)
    np.testing.assert_array_equal(mask, (truth == 0) & cols[None, None, :])
    np.testing.assert_allclose(solve.refit_masked(truth, hd, mask), truth, atol=1e-8)

    dense = r.normal(size=(1, 5, 17))

    def err(mask: np.ndarray) -> float:
        v = solve.refit_masked(dense, hd, mask)
        return float(np.sum((x @ (v[0] - dense[0]).T) ** 2))

    greedy = solve.obs_greedy(dense, hd, 0.5, cols)
    swept = (solve.obs_sweep(dense, hd, sparsity=0.5, prunable=cols) == 0) & cols
    assert greedy[..., :-1].sum(axis=2).tolist() == [[8] * 5]
    assert err(greedy) < err(swept)


def _halves(rows: int, d: int, seed: int) -> list[GramStats]:
    """Statistics of two halves of a layer's input whose compressed version x_c differs from
    the original x_o by noise unrelated to the input (an upstream error no weight can undo)."""
    r = np.random.default_rng(seed)
    mixing = r.normal(size=(d, d))
    out = []
    for _ in range(2):
        xo = r.normal(size=(rows // 2, d)) @ mixing
        xc = xo + r.normal(size=xo.shape) * 0.5 * xo.std()
        out.append(GramStats((xc.T @ xc)[None], (xc.T @ xo)[None], (xo.T @ xo)[None],
                             rows // 2, same=False))  # fmt: skip
    return out


def test_a_layer_with_few_rows_per_input_gets_the_ridge_that_generalises() -> None:
    d = 32
    w = np.random.default_rng(1).normal(size=(1, 8, d))
    few = _halves(2 * d, d, seed=2)
    chosen = held_out_ridge(w, *few)
    assert chosen > solve.RIDGE
    # fitted on both halves, judged on inputs it has not seen: the chosen ridge does better
    fresh = combined(*_halves(4000, d, seed=3))
    all_rows = combined(*few)
    assert all_rows.hcc is not None

    def unseen_error(ridge: float) -> float:
        assert all_rows.hcc is not None
        return output_error(solve.ls_target(w, all_rows.hcc, all_rows.cross(), ridge), w, fresh)

    assert unseen_error(chosen) < 0.8 * unseen_error(solve.RIDGE)
    many = _halves(ROWS_PER_INPUT * d, d, seed=4)
    assert held_out_ridge(w, *many) == solve.RIDGE  # enough rows: the default, no check
