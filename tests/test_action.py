"""The composite GitHub Action (action.yml) runs as written: its shell steps are run here with
the environment the Actions runner gives them; `uses:` steps are checked, not run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, SAMPLES

ACTION = REPO / "action.yml"


def _action() -> dict[str, Any]:
    return yaml.safe_load(ACTION.read_text(encoding="utf-8"))


class _Runner:
    """Just enough of the Actions runner: `${{ }}` expressions over inputs, github.action_path
    and step outputs; `if:` conditions; GITHUB_OUTPUT files."""

    def __init__(self, workdir: Path, inputs: dict[str, str]) -> None:
        action = _action()
        defaults = {k: str(v.get("default", "")) for k, v in action["inputs"].items()}
        self.inputs = {**defaults, **inputs}
        self.workdir = workdir
        self.outputs: dict[str, dict[str, str]] = {}
        self.failed_with: int | None = None
        shim = workdir / "bin"
        shim.mkdir()
        # `mcompress` as pip would install it, running this checkout.
        (shim / "mcompress").write_text(
            f'#!/bin/sh\nPYTHONPATH="{REPO}" exec "{sys.executable}" -m mcompress "$@"\n'
        )
        (shim / "mcompress").chmod(0o755)
        self.path = f"{shim}{os.pathsep}{os.environ.get('PATH', '')}"

    def value(self, text: str) -> str:
        return re.sub(r"\$\{\{\s*(.*?)\s*\}\}", lambda m: self._expr(m.group(1)), str(text))

    def _expr(self, expr: str) -> str:
        for term in (t.strip() for t in expr.split("||")):
            if term.startswith("inputs."):
                found = self.inputs[term.removeprefix("inputs.")]
            elif term == "github.action_path":
                found = str(REPO)
            else:
                _, step, _, key = term.split(".")
                found = self.outputs.get(step, {}).get(key, "")
            if found:
                return found
        return ""

    def wanted(self, condition: str | None) -> bool:
        if condition is None:
            return self.failed_with is None
        if condition == "always()":
            return True
        left, right = condition.split("!=")
        return self._expr(left.strip()) != right.strip().strip("'")

    def run(self, step: dict[str, Any]) -> int:
        output = self.workdir / "github_output"
        output.write_text("")
        env = {
            **os.environ,
            "PATH": self.path,
            "GITHUB_OUTPUT": str(output),
            "GITHUB_STEP_SUMMARY": str(self.workdir / "step_summary.md"),
            **{k: self.value(v) for k, v in step.get("env", {}).items()},
        }
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        lines = output.read_text().splitlines()
        self.outputs[step.get("id", "")] = dict(line.split("=", 1) for line in lines if "=" in line)
        if done.returncode:
            self.failed_with = done.returncode
        return done.returncode


def _run_action(tmp_path: Path, gates: str) -> tuple[_Runner, list[str]]:
    shutil.copy(SAMPLES / "digits_cnn.onnx", tmp_path / "digits_cnn.onnx")
    shutil.copy(SAMPLES / "digits_val.npz", tmp_path / "val.npz")
    runner = _Runner(tmp_path, {"model": "digits_cnn.onnx", "data": "val.npz", "gates": gates})
    ran: list[str] = []
    for step in _action()["runs"]["steps"]:
        if "uses" in step or not runner.wanted(step.get("if")):
            continue
        if step["name"] == "Install mcompress":
            # Installing is the runner's business; this checkout is what it would install.
            assert runner.value(step["env"]["SOURCE"]) == str(REPO)
            continue
        runner.run(step)
        ran.append(step["name"])
    return runner, ran


def test_action_declares_inputs_outputs_and_uploads_always() -> None:
    action = _action()
    assert action["runs"]["using"] == "composite"
    assert {"model", "config", "data", "gates"} <= set(action["inputs"])
    assert action["inputs"]["model"]["required"] is True
    [upload] = [s for s in action["runs"]["steps"] if "upload-artifact" in s.get("uses", "")]
    assert upload["if"] == "always()"
    assert upload["with"]["path"] == "${{ inputs.output-dir }}"
    assert set(action["outputs"]) == {"exit-code", "model", "report"}


@pytest.mark.slow
def test_action_compresses_gates_and_writes_the_step_summary(tmp_path: Path) -> None:
    runner, ran = _run_action(tmp_path, "--max-accuracy-drop 0.01 --min-compression-ratio 3")
    assert ran == ["Compress, validate and gate"] and runner.failed_with is None
    outputs = runner.outputs["compress"]
    assert outputs == {
        "exit-code": "0",
        "model": "mcompress-out/digits_cnn.level1.onnx",
        "report": "mcompress-out/report.json",
    }
    out = tmp_path / "mcompress-out"
    assert {p.name for p in out.iterdir()} == {
        "digits_cnn.level1.onnx",
        "report.json",
        "report.md",
        "report.html",
    }
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] and {g["name"] for g in report["gates"]} >= {
        "max_accuracy_drop",
        "min_compression_ratio",
    }
    assert "digits_cnn" in (tmp_path / "step_summary.md").read_text()


@pytest.mark.slow
def test_action_fails_the_job_on_a_failed_gate_after_keeping_the_files(tmp_path: Path) -> None:
    runner, ran = _run_action(tmp_path, "--min-compression-ratio 100")
    assert ran == ["Compress, validate and gate", "Fail the job when mcompress failed"]
    assert runner.outputs["compress"]["exit-code"] == "3" and runner.failed_with == 3
    assert (tmp_path / "mcompress-out" / "digits_cnn.level1.onnx").is_file()
    assert (tmp_path / "mcompress-out" / "report.json").is_file()
