"""Structured pruning with recovery (ThiNet, He et al. 2017): input channels of a consumer layer
are removed one at a time, each time the one whose removal (with the remaining weights
re-fitted) adds the least output error, then the consumer is re-fitted by least squares.

A channel is a block of input columns (k x k of them for a Conv). Removing block B from the
optimum of ||(Ŵ - W) x||² changes the error by tr(W_B [H⁻¹]_BB⁻¹ W_Bᵀ) and the kept weights by
-W_B [H⁻¹]_BB⁻¹ [H⁻¹]_B,: (the OBS update for a group of weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mcompress.recover import solve


@dataclass
class ConsumerState:
    """One consumer's weights (`[rows, d]`, one group) and H⁻¹ while channels are removed."""

    w: np.ndarray
    hinv: np.ndarray
    scale: float  # output energy, so consumers of different sizes weigh alike
    blocks: dict[int, np.ndarray]  # group channel -> its input columns in this consumer

    @classmethod
    def start(cls, w: np.ndarray, h: np.ndarray, blocks: dict[int, np.ndarray]) -> ConsumerState:
        hd = solve.damped(h[None])[0]
        energy = float(np.sum((w @ h) * w))
        return cls(w.copy(), np.linalg.inv(hd), max(energy, 1e-30), blocks)

    def cost(self, channel: int) -> float:
        b = self.blocks[channel]
        wb = self.w[:, b]
        inner = np.linalg.inv(self.hinv[np.ix_(b, b)])
        return float(np.sum((wb @ inner) * wb)) / self.scale

    def remove(self, channel: int) -> None:
        b = self.blocks.pop(channel)
        inner = np.linalg.inv(self.hinv[np.ix_(b, b)])
        self.w -= self.w[:, b] @ inner @ self.hinv[b, :]
        self.hinv -= self.hinv[:, b] @ inner @ self.hinv[b, :]
        self.w[:, b] = 0


def choose_channels(consumers: list[ConsumerState], channels: int, keep: int) -> np.ndarray:
    """Indices (sorted) of the `keep` channels to keep: greedy backward elimination by the
    summed relative output error of every consumer."""
    alive = list(range(channels))
    while len(alive) > keep:
        costs = [sum(c.cost(ch) for c in consumers) for ch in alive]
        worst = alive.pop(int(np.argmin(costs)))
        for c in consumers:
            c.remove(worst)
    return np.array(alive, dtype=np.int64)


def choose_across_groups(
    groups: dict[int, tuple[list[ConsumerState], int]], remove: int, step: int
) -> dict[int, np.ndarray]:
    """Kept channels per group when `remove` channels in all are taken where they cost least:
    `step` channels at a time from the group whose `step` cheapest channels add the least
    summed relative output error (so narrow, widely read groups lose fewer). A group keeps at
    least `step` channels."""
    alive = {gid: list(range(channels)) for gid, (_, channels) in groups.items()}
    removed = 0
    while removed < remove:
        best, best_cost, best_channels = None, np.inf, []
        for gid, (states, _) in groups.items():
            if len(alive[gid]) - step < step:
                continue
            costs = np.array([sum(s.cost(ch) for s in states) for ch in alive[gid]])
            order = np.argsort(costs, kind="stable")[:step]
            total = float(costs[order].sum())
            if total < best_cost:
                best, best_cost, best_channels = gid, total, [alive[gid][i] for i in order]
        if best is None:
            break
        for ch in best_channels:
            alive[best].remove(ch)
            for s in groups[best][0]:
                s.remove(ch)
        removed += step
    return {gid: np.array(sorted(ch), dtype=np.int64) for gid, ch in alive.items()}
