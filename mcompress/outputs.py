"""Every file a command writes: checked against every input before work starts, written into a
private staging folder beside its target, claimed atomically at the end and removed if the run
does not finish. `--force` may replace outputs, never inputs (the model named by -o excepted:
its original stays in place until the new one is validated).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from mcompress.errors import UsageError

# Staging folders are named `.mcompress-<host>-<pid>-<random>.tmp`: short (a 250-byte output
# name still fits beside it) and obviously temporary; a later run on the same host removes
# those of dead processes (a shared folder may hold other hosts' live ones).
STAGING_PREFIX = ".mcompress-"
_HOST = f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFF:04x}"
_STAGING_NAME = re.compile(rf"^\.mcompress-{_HOST}-(\d+)-[A-Za-z0-9_]+\.tmp$")
# errno values of file systems without hard links: claim by exclusive create, then rename.
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK}


class OutputError(UsageError):
    """An output file that cannot be written: exists, collides with an input, or the OS refuses."""


def os_error(path: Path, exc: OSError) -> OutputError:
    """One line naming the path and the OS reason (read-only folder, disk full, name too long)."""
    reason = exc.strerror or str(exc)
    return OutputError(f"cannot write '{path}': {reason}")


@dataclass(frozen=True)
class _Input:
    path: Path
    what: str  # "input model", "external data of the input model", "--data file", ...


@dataclass(frozen=True)
class _Output:
    path: Path
    option: str  # how the user named it: "-o", "--report", "summary.json" ...
    replaces_model: bool = False  # -o may name the input model itself (with --force)
    exists_ok: bool = False  # may not be written at all: only clashes are refused up front


def _identity(path: Path) -> tuple[object, ...]:
    """What makes two names the same file: device and inode when it exists (symlinks and hard
    links included), else the resolved path."""
    try:
        st = os.stat(path)
    except OSError:
        return ("path", os.path.realpath(path))
    return ("inode", st.st_dev, st.st_ino)


class Outputs:
    """The plan of one command's outputs. Use as a context manager:

        with Outputs(force) as outs:
            outs.add_input(model, "input model"); outs.add(out, "-o", replaces_model=True)
            outs.check()                      # before any work
            write(outs.staged(out))           # into the staging folder
            outs.commit()                     # claim every staged file atomically

    Leaving the block without `commit` removes everything staged; nothing else is touched.
    """

    def __init__(self, force: bool) -> None:
        self.force = force
        self.inputs: list[_Input] = []
        self.outputs: list[_Output] = []
        self._staging: dict[Path, Path] = {}  # target folder -> its staging folder
        self._staged: dict[Path, Path] = {}  # target -> staged file

    # ------------------------------------------------------------ plan

    def add_input(self, path: Path | str | None, what: str) -> None:
        """An input file (a folder stands for every file under it); missing ones are skipped:
        reading them fails later with its own message."""
        if path is None:
            return
        path = Path(path)
        if path.is_dir():
            self.inputs.extend(_Input(f, what) for f in sorted(path.rglob("*")) if f.is_file())
        elif path.exists():
            self.inputs.append(_Input(path, what))

    def add(
        self,
        path: Path | None,
        option: str,
        *,
        replaces_model: bool = False,
        exists_ok: bool = False,
    ) -> None:
        """A file this command writes (`exists_ok`: one it writes only in some cases)."""
        if path is not None:
            self.outputs.append(_Output(Path(path), option, replaces_model, exists_ok))

    def check(self) -> None:
        """Refuse, before any work, an output that is a folder, lacks its folder, is an input
        (`--force` excepted only for -o over the input model), is named twice, or exists."""
        inputs = [(_identity(i.path), i) for i in self.inputs]
        seen: dict[str, _Output] = {}
        for out in self.outputs:
            try:
                self._check_one(out, inputs, seen)
            except OSError as exc:  # a name too long for the file system, a folder we cannot read
                if not (out.exists_ok and exc.errno == errno.ENAMETOOLONG):  # never written
                    raise os_error(out.path, exc) from None

    def _check_one(
        self,
        out: _Output,
        inputs: list[tuple[tuple[object, ...], _Input]],
        seen: dict[str, _Output],
    ) -> None:
        """One output of `check` (`seen`: the outputs checked so far, by real path)."""
        path = out.path
        if path.is_dir():
            raise OutputError(f"{out.option} '{path}' is a folder; give a file name")
        if not path.parent.is_dir():
            raise OutputError(f"folder '{path.parent}' of {out.option} '{path}' does not exist")
        same = os.path.realpath(path)
        if same in seen:
            raise OutputError(
                f"{seen[same].option} and {out.option} both name '{path}'; "
                "give them different paths"
            )
        seen[same] = out
        identity = _identity(path)
        hit = next((i for key, i in inputs if key == identity), None)
        if hit is not None:
            self._check_input_clash(out, hit)
        elif path.exists() and not (self.force or out.exists_ok):
            raise OutputError(f"output '{path}' already exists; pass --force to overwrite it")

    def _check_input_clash(self, out: _Output, hit: _Input) -> None:
        if out.replaces_model and hit.what == "input model":
            if not self.force:
                raise OutputError(
                    f"output '{out.path}' is the input model; choose another -o path "
                    "(or pass --force to replace the input)"
                )
            return
        raise OutputError(
            f"{out.option} '{out.path}' is the {hit.what} '{hit.path}'; "
            "--force never replaces an input, choose another path"
        )

    # ------------------------------------------------------------ write

    def staged(self, target: Path) -> Path:
        """Where to write `target` before it is claimed: same name, in a staging folder of the
        target's folder (same file system, so claiming is a link or a rename)."""
        target = Path(target)
        folder = target.resolve().parent
        if folder not in self._staging:
            try:
                self._staging[folder] = private_folder(folder)
            except OSError as exc:
                raise os_error(target, exc) from None
        staged = self._staging[folder] / target.name
        self._staged[target] = staged
        return staged

    def write_text(self, target: Path, text: str) -> None:
        """Stage a text file (a report) for `target`."""
        staged = self.staged(target)
        try:
            staged.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise os_error(target, exc) from None

    @contextlib.contextmanager
    def writing(self, target: Path) -> Iterator[Path]:
        """The staged path of `target`; an OS error while writing it names `target`."""
        staged = self.staged(target)
        try:
            yield staged
        except OSError as exc:
            raise os_error(target, exc) from None

    def commit(self) -> list[Path]:
        """Claim every staged file (external data before its model): a hard link that fails if
        the target exists, or a rename with `--force`. Signals wait until it is done; on any
        failure the files claimed so far by this call are removed again."""
        order = sorted(self._staged.items(), key=lambda kv: not kv[0].name.endswith(".data"))
        claimed: list[Path] = []
        with _signals_deferred():
            try:
                for target, staged in order:
                    if os.path.exists(staged) and claim(staged, target, self.force):
                        claimed.append(target)
            except BaseException:
                for path in claimed:
                    path.unlink(missing_ok=True)
                raise
        self._staged.clear()
        return [target for target, _ in order]

    def __enter__(self) -> Outputs:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for folder in self._staging.values():
            shutil.rmtree(folder, ignore_errors=True)
        self._staging.clear()
        self._staged.clear()


def claim(staged: Path, target: Path, force: bool) -> bool:
    """Move `staged` to `target` atomically; True when `target` did not exist before (so
    undoing the claim removes it). Without `force` exactly one of two racing processes wins."""
    try:
        if force:
            existed = os.path.lexists(target)
            os.replace(staged, target)
            return not existed
        try:
            os.link(staged, target)
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            os.replace(staged, target)
            return True
        os.unlink(staged)
        return True
    except FileExistsError:
        raise OutputError(
            f"output '{target}' already exists (another process wrote it meanwhile); "
            "pass --force to overwrite it"
        ) from None
    except OSError as exc:
        raise os_error(target, exc) from None


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while the block runs (main thread only), so a claim is never cut."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def private_folder(parent: Path) -> Path:
    """A new folder of this process in `parent` (`.mcompress-<host>-<pid>-<random>.tmp`), once
    those of dead processes there are removed."""
    sweep_stale(parent)
    prefix = f"{STAGING_PREFIX}{_HOST}-{os.getpid()}-"
    return Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent))


def sweep_stale(folder: Path) -> None:
    """Remove staging folders in `folder` left by processes that no longer run (killed -9)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        match = _STAGING_NAME.match(entry.name)
        if match and entry.is_dir(follow_symlinks=False) and not pid_alive(int(match[1])):
            shutil.rmtree(entry.path, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as gone)."""
    if pid == os.getpid():
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def write_file(path: Path, text: str, force: bool, option: str) -> None:
    """Write one text file under the same rules (checked, staged, claimed)."""
    with Outputs(force) as outs:
        outs.add(path, option)
        outs.check()
        outs.write_text(path, text)
        outs.commit()
