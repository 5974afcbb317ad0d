"""Ctrl-C and SIGTERM end a single command with one line, exit 130 / 143 and no temp files;
click usage errors are one line; crash logs never overwrite each other (issue 12, 14 and 16)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import mcompress.cli as cli
from mcompress.outputs import STAGING_PREFIX
from tests import builders


@pytest.fixture(autouse=True)
def _keep_signal_handlers() -> Iterator[None]:
    """`cli.main` installs its own SIGINT/SIGTERM handlers: give pytest its own back."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, action in previous.items():
        signal.signal(s, action)


def _interrupt_quantize(tmp_path: Path, sig: signal.Signals) -> subprocess.CompletedProcess[str]:
    """Start a quantize with a long validation, send `sig` once its staging folder exists."""
    model = builders.save(builders.mlp(hidden=256, inputs=256), tmp_path / "m.onnx")
    before = model.read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcompress", "quantize", str(model), "--samples", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(STAGING_PREFIX) for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(sig)
    out, errors = proc.communicate(timeout=120)
    assert model.read_bytes() == before
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, errors)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_is_one_line_and_removes_staging(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    result = _interrupt_quantize(tmp_path, sig)
    assert (result.returncode, result.stderr) == (code, f"mcompress: interrupted ({sig.name})\n")
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_sigterm_in_process_reaches_cleanup(monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    cleaned: list[str] = []

    def command(standalone_mode: bool) -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except Exception:
            cleaned.append("swallowed by except Exception")
        finally:
            cleaned.append("finally")
        return 0

    monkeypatch.setattr(cli, "app", command)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 143
    assert cleaned == ["finally"]
    assert capsys.readouterr().err == "mcompress: interrupted (SIGTERM)\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["quantize", "--samples", "abc", "m.onnx"],
            "Invalid value for '--samples': Input should be a valid integer, unable to parse "
            "string as an integer (see 'mcompress quantize -h')",
        ),
        (["quantize"], "Missing argument 'MODEL'. (see 'mcompress quantize -h')"),
        (
            ["quantiz", "m.onnx"],
            "No such command 'quantiz'. Did you mean 'quantize'? (see 'mcompress -h')",
        ),
        (["quantize", "missing.onnx"], "model file 'missing.onnx' does not exist"),
    ],
)
def test_usage_error_is_one_line_exit_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys,
    args: list[str],
    message: str,  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setattr(sys, "argv", ["mcompress", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"mcompress: error: {message}\n"


def test_crash_logs_have_unique_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    def crash(standalone_mode: bool) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "app", crash)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    for _ in range(2):
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
        assert exit_info.value.code == 1
    logs = sorted(tmp_path.glob("mcompress-error-*.log"))
    assert len(logs) == 2
    assert all("RuntimeError: boom" in log.read_text() for log in logs)
    lines = capsys.readouterr().err.splitlines()
    assert sorted(line.split("traceback saved to ")[1] for line in lines) == [
        f"{log}; please report it)" for log in logs
    ]


def test_interrupt_while_validating_a_replacement_keeps_the_original(tmp_path: Path) -> None:
    """`-o m.onnx --force` over the input itself: Ctrl-C while the new model is validated
    leaves the original in place, never the unvalidated one."""
    model = builders.save(builders.mlp(hidden=256, inputs=256), tmp_path / "m.onnx")
    before = model.read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcompress", "quantize", str(model), "-o", str(model), "--force"]
        + ["--samples", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(f"{STAGING_PREFIX}*/m.onnx")):  # saved: validation runs
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, errors = proc.communicate(timeout=120)
    assert (proc.returncode, errors) == (130, "mcompress: interrupted (SIGINT)\n")
    assert model.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_an_unreadable_model_is_one_line_exit_2(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys,  # type: ignore[no-untyped-def]
) -> None:
    (tmp_path / "dir.onnx").mkdir()
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    (tmp_path / "dangling.onnx").symlink_to(tmp_path / "nowhere.onnx")
    cases = {
        "dir.onnx": "'{}' is a folder, not an ONNX model file",
        "bad.onnx": "'{}' is not a readable ONNX model (corrupt or truncated protobuf)",
        "dangling.onnx": "model file '{}' does not exist",
    }
    for name, message in cases.items():
        path = tmp_path / name
        monkeypatch.setattr(sys, "argv", ["mcompress", "quantize", str(path)])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == f"mcompress: error: {message.format(path)}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(cases)


def test_deferred_signals_raise_only_where_the_block_checks() -> None:
    """A batch's pool loop notes SIGTERM and raises it between waits: raised inside the
    pool's own locking, it hung the pool's shutdown instead of exiting 143."""
    from mcompress.processes import Stopped, deferred_signals

    before = signal.getsignal(signal.SIGTERM)
    reached = []
    with pytest.raises(Stopped) as stopped, deferred_signals() as caught:
        os.kill(os.getpid(), signal.SIGTERM)
        reached.append("after the signal")  # not interrupted here
        caught.check()
        reached.append("after the check")
    assert reached == ["after the signal"] and stopped.value.signal_name == "SIGTERM"
    with pytest.raises(Stopped), deferred_signals():  # noted at the end when never checked
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back


def test_a_signal_inside_native_code_is_an_interrupt_not_its_error(
    request: pytest.FixtureRequest,
) -> None:
    from mcompress.processes import signals_after

    # a shell's background job starts with SIGINT ignored: give it Python's own handler
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    with pytest.raises(KeyboardInterrupt), signals_after():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        except KeyboardInterrupt:  # native code swallowing the handler's exception
            raise RuntimeError("initialization failed") from None
    with signals_after():
        pass  # no signal: nothing raised
