"""The two onnxruntime sessions validation compares: held both at once, or one at a time when
together they would need far more memory than either model alone.

Holding both lets latency alternate between the models run by run. For a 2.5 GB model that
doubles the memory validation needs (8 GB peak for a clustered MLP whose original runs in
2.6 GB), so for large models only the model in use is loaded: asking for the other releases it
first. Each model's input and output names and types are kept from its first load, so checking
them does not load it again, and so is its peak memory (`model_server.ServedSession.peak`).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ONE_AT_A_TIME_NOTE = (
    "the two models were loaded one at a time (their files total over 256 MB), so latency "
    "ran one model after the other instead of interleaved"
)


class SessionPair:
    """sessions[0] is the original, sessions[1] the compressed model; each is a `Handle` that
    loads its session when it runs. `order()` is the order to run the models in: the one held
    first, so one-at-a-time validation loads each model as few times as it can."""

    def __init__(self, load: Callable[[int], Any], alone: bool) -> None:
        self.alone = alone
        self._load = load
        self._held: dict[int, Any] = {}
        self._handles = (Handle(self, 0), Handle(self, 1))
        if not alone:  # both start; each is described when first used (`model_server`)
            try:
                self._held = {0: load(0)}
                self._held[1] = load(1)
            except BaseException:
                self.close()
                raise

    def __getitem__(self, which: int) -> Handle:
        return self._handles[which]

    def __len__(self) -> int:
        return 2

    def __iter__(self) -> Any:
        return iter(self._handles)

    def order(self) -> tuple[int, int]:
        return (1, 0) if list(self._held) == [1] else (0, 1)

    def session(self, which: int) -> Any:
        """The session of model `which`, loaded now if it is not held (releasing the other
        first when one at a time)."""
        if which not in self._held:
            if self.alone and self._held:
                self.close()
            self._held[which] = self._load(which)
        handle = self._handles[which]
        if handle.inputs is None or handle.outputs is None:
            handle.inputs = _copies(self._held[which].get_inputs())
            handle.outputs = _copies(self._held[which].get_outputs())
        return self._held[which]

    def close(self) -> None:
        """Release the sessions held (ending the processes serving them)."""
        held = list(self._held.values())
        self._held.clear()
        for session in held:
            if hasattr(session, "close"):
                session.close()
        del held
        gc.collect()


@dataclass(frozen=True)
class NodeInfo:
    """An input's or output's name, type and shape, copied: onnxruntime's own NodeArg keeps
    its whole session (all the model's weights) alive."""

    name: str
    type: str
    shape: list[Any]


def _copies(args: list[Any]) -> list[NodeInfo]:
    return [NodeInfo(arg.name, arg.type, list(arg.shape)) for arg in args]


class Handle:
    """One model of a `SessionPair`, used like an onnxruntime session (get_inputs,
    get_outputs, run)."""

    def __init__(self, pair: SessionPair, which: int) -> None:
        self.pair, self.which = pair, which
        self.inputs: list[NodeInfo] | None = None
        self.outputs: list[NodeInfo] | None = None
        self.peak: int | None = None
        self.run_ms: list[float] = []

    def get_inputs(self) -> list[NodeInfo]:
        if self.inputs is None:
            self.pair.session(self.which)
        assert self.inputs is not None
        return self.inputs

    def get_outputs(self) -> list[NodeInfo]:
        if self.outputs is None:
            self.pair.session(self.which)
        assert self.outputs is not None
        return self.outputs

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """The session's run; a served model's time of it is kept in `run_ms`."""
        session = self.pair.session(self.which)
        outputs = session.run(*args, **kwargs)
        self._note_peak(session)
        if getattr(session, "last_ms", None) is not None:
            self.run_ms.append(session.last_ms)
        return outputs

    def timed_run(self, feed: dict[str, Any]) -> float:
        """Milliseconds of one run of `feed` (measured by a served model's own process)."""
        session = self.pair.session(self.which)
        if hasattr(session, "timed_run"):
            ms = float(session.timed_run(feed))
        else:
            start = time.perf_counter()
            session.run(None, feed)
            ms = (time.perf_counter() - start) * 1000
        self._note_peak(session)
        return ms

    def _note_peak(self, session: Any) -> None:
        """Keep the first peak memory a served session reports (its first load and run)."""
        if self.peak is None:
            self.peak = getattr(session, "peak", None)
