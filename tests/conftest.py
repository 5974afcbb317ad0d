"""Shared fixtures: the real third-party models beside the repo, when present."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MODELS = REPO.parent / "shared" / "models"
CLASSIFIER = SHARED_MODELS / "ppocr_mobile_v2_cls.onnx"
VAD = SHARED_MODELS / "silero_vad_op18_ifless.onnx"
SAMPLES = REPO / "sample_models"


def shared_model(path: Path) -> Path:
    """The shared model at `path`, or skip the test when ../shared/models is absent."""
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture
def classifier() -> Path:
    return shared_model(CLASSIFIER)


@pytest.fixture
def vad() -> Path:
    return shared_model(VAD)
