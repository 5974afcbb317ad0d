"""Shared fixtures: the real third-party models beside the repo (or where
MCOMPRESS_SHARED_MODELS points), skipped when absent, a failure when CI=true."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MODELS = Path(os.environ.get("MCOMPRESS_SHARED_MODELS") or REPO.parent / "shared" / "models")
CLASSIFIER = SHARED_MODELS / "ppocr_mobile_v2_cls.onnx"
VAD = SHARED_MODELS / "silero_vad_op18_ifless.onnx"
SAMPLES = REPO / "sample_models"


def in_ci() -> bool:
    """True on a CI runner (CI=true, as GitHub Actions and most CI systems set)."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def shared_model(path: Path) -> Path:
    """The shared model at `path`; when absent the test skips, or fails in CI, where a silent
    skip would hide that the real-model tests did not run."""
    if not path.is_file():
        why = f"{path} not present (set MCOMPRESS_SHARED_MODELS to the folder holding it)"
        if in_ci():
            pytest.fail(why)
        pytest.skip(why)
    return path


@pytest.fixture
def classifier() -> Path:
    return shared_model(CLASSIFIER)


@pytest.fixture
def vad() -> Path:
    return shared_model(VAD)
