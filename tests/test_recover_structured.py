"""Structured pruning with recovery: channel choice by reconstruction error, and the re-fit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from mcompress.recover.channels import ConsumerState, choose_across_groups
from tests import builders


def test_a_redundant_channel_goes_first_and_costs_nothing() -> None:
    r = np.random.default_rng(0)
    x = r.normal(size=(500, 4))
    x = np.concatenate([x, x[:, :1] * 2.0, np.ones((500, 1))], axis=1)  # channel 4 = 2 x ch 0
    h = x.T @ x
    w = r.normal(size=(3, 6))
    blocks = {ch: np.array([ch]) for ch in range(5)}
    state = ConsumerState.start(w, h, blocks)
    kept = choose_across_groups({0: ([state], 5)}, remove=1, step=1)[0]
    assert kept.size == 4 and {0, 4} - set(kept.tolist())
    fitted = np.zeros_like(w)
    fitted[:, kept.tolist() + [5]] = state.w[:, kept.tolist() + [5]]
    error = np.sum((x @ (fitted - w).T) ** 2) / np.sum((x @ w.T) ** 2)
    assert error < 1e-4  # only the ridge separates the re-fit from the exact answer


def test_structured_prune_with_calibration_cli(tmp_path: Path) -> None:
    source = builders.save(builders.conv_bn(channels=16), tmp_path / "cnn.onnx")
    r = np.random.default_rng(1)
    mix = r.normal(size=(3, 3))

    def images(n: int, seed: int) -> np.ndarray:
        base = np.random.default_rng(seed).normal(size=(n, 3, 16, 16))
        return np.einsum("nchw,cd->ndhw", base, mix).astype(np.float32)

    np.savez(tmp_path / "calib.npz", x=images(64, 2))
    np.savez(tmp_path / "val.npz", x=images(32, 3))
    sqnr, removed = {}, {}
    for flag in ("--recover", "--no-recover"):
        result = subprocess.run(
            [sys.executable, "-m", "mcompress", "prune", str(source), "-s", "0.5",
             "--structured", "--calibration", str(tmp_path / "calib.npz"), flag,
             "--data", str(tmp_path / "val.npz"), "-o", str(tmp_path / f"{flag}.onnx"), "--json"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode in ((0,) if flag == "--recover" else (0, 3)), result.stderr
        report = json.loads(result.stdout)
        sqnr[flag] = report["validation"]["overall"]["sqnr_db"]
        removed[flag] = report["passes"][0]["stats"]["parameters_removed"]
    assert sqnr["--recover"] > sqnr["--no-recover"] + 3, sqnr
    assert removed["--recover"] > 0.2
