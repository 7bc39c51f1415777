"""The input broker: hands an admin's answers (action ``provide_input``) to the waiting run.

A run whose steps need values the old config never held (see
:class:`agent.migrations.model.InputNeeds`) reports AWAITING_INPUT with an ``InputRequest``
(a new ``request_id`` per ask, except that a run resumed after a restart asks again with its
recorded ``request_id`` when it needs the same fields) and waits here, on the migration worker
thread, until

* the check-in thread delivers the answers of exactly that request (:meth:`InputBroker.deliver`,
  called with the params of a verified ``provide_input`` action), or
* the run is cancelled (``cancel_run``), the agent stops, or the input timeout passes.

Answers live in memory only: the broker hands them over and forgets them. A delivery for a run
that is not waiting, for an old ``request_id`` or with unknown field names is refused with a
reason that names the run, the request and the field names, never a value.

Params of ``provide_input`` (see :func:`answers_from_params`): ``run_id``, ``request_id`` and one
``input.<name>`` per answer.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # agent.actions imports the run machinery; only its types are needed here
    from agent.action_verify import VerifiedAction
    from agent.outbox import Outbox

log = logging.getLogger(__name__)

INPUT_NAME = re.compile(r"[a-z0-9_]{1,64}")

PROVIDE_INPUT = "provide_input"
INPUT_PREFIX = "input."

ANSWERED = "answered"
CANCELLED = "cancelled"
TIMED_OUT = "timed_out"
STOPPED = "stopped"

# Longest single wait: bounds how late a cancel or stop is noticed.
_TICK = 0.05


class Inputs(Mapping[str, str]):
    """Input values by name, held in memory only. ``repr`` and ``str`` never show a value, so
    an Inputs object that ends up in a log line or an exception message leaks nothing."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self._values = dict(values or {})

    def __getitem__(self, name: str) -> str:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Inputs({', '.join(f'{name}=***' for name in self._values)})"

    __str__ = __repr__

    def only(self, names: Sequence[str]) -> Inputs:
        """The values of ``names`` that are present."""
        return Inputs({name: self._values[name] for name in names if name in self._values})


@dataclass(frozen=True, slots=True)
class WaitOutcome:
    """How a wait ended; ``answers`` only when ``kind`` is :data:`ANSWERED`."""

    kind: str
    answers: Inputs = field(default_factory=Inputs)


@dataclass(slots=True)
class _Ask:
    request_id: str
    names: frozenset[str]
    answers: Inputs | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """What ``provide_input`` params say (see :func:`answers_from_params`)."""

    run_id: str
    request_id: str
    answers: Inputs


def answers_from_params(params: Mapping[str, str]) -> Delivery:
    """Split verified ``provide_input`` params into run id, request id and answers."""
    answers = {
        key.removeprefix(INPUT_PREFIX): value
        for key, value in params.items()
        if key.startswith(INPUT_PREFIX)
    }
    return Delivery(params.get("run_id", ""), params.get("request_id", ""), Inputs(answers))


class InputBroker:
    """The open input requests of this agent's runs; thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._asks: dict[str, _Ask] = {}

    def open(self, run_id: str, request_id: str, names: Collection[str]) -> None:
        """``run_id`` now waits for ``request_id``, asking for ``names`` (replaces an older ask:
        answers to that one are refused from now on). Opening the ask that is already open
        (same request id and names) keeps answers already delivered to it: the daemon opens
        the asks of recorded waiting runs before its first check-in, and the resumed run opens
        the same ask again later."""
        wanted = frozenset(names)
        with self._cond:
            ask = self._asks.get(run_id)
            if ask is not None and ask.request_id == request_id and ask.names == wanted:
                return
            self._asks[run_id] = _Ask(request_id, wanted)

    def close(self, run_id: str) -> None:
        """``run_id`` no longer waits (idempotent)."""
        with self._cond:
            self._asks.pop(run_id, None)

    def waiting(self, run_id: str) -> str | None:
        """The request id ``run_id`` waits for, None if it is not waiting."""
        with self._cond:
            ask = self._asks.get(run_id)
            return ask.request_id if ask is not None else None

    def deliver(self, run_id: str, request_id: str, answers: Mapping[str, str]) -> str:
        """Hand ``answers`` to the run waiting for ``request_id``.

        Returns "" when accepted, otherwise the reason for the refusal (names only, no value)."""
        names = sorted(answers)
        bad = [name for name in names if not INPUT_NAME.fullmatch(name)]
        if bad:
            return f"{len(bad)} input name(s) are not [a-z0-9_]{{1,64}}"
        with self._cond:
            ask = self._asks.get(run_id)
            if ask is None:
                return f"run {run_id or '(none given)'} is not waiting for input"
            if request_id != ask.request_id:
                return (
                    f"run {run_id} no longer waits for request {request_id or '(none given)'} "
                    f"(it now waits for request {ask.request_id})"
                )
            if ask.answers is not None:
                return f"request {request_id} of run {run_id} was already answered"
            unknown = [name for name in names if name not in ask.names]
            if unknown:
                return f"request {request_id} of run {run_id} did not ask for: {', '.join(unknown)}"
            if not names:
                return f"the answer to request {request_id} of run {run_id} holds no input"
            ask.answers = Inputs(answers)
            self._cond.notify_all()
        return ""

    def wait(
        self,
        run_id: str,
        request_id: str,
        *,
        timeout: float,
        cancelled: Callable[[], bool],
        stopping: Callable[[], bool],
    ) -> WaitOutcome:
        """Block until the answers of ``request_id`` arrive, the run is cancelled, the agent
        stops, or ``timeout`` seconds pass. On return the request is closed, whatever ended the
        wait: after a stop answers are refused until the next start re-opens the request (the
        run stays recorded as waiting, see :mod:`agent.migrations.waiting`)."""
        deadline = self._clock() + max(0.0, timeout)
        with self._cond:
            while True:
                ask = self._asks.get(run_id)
                if ask is not None and ask.request_id == request_id and ask.answers is not None:
                    answers = ask.answers
                    del self._asks[run_id]
                    return WaitOutcome(ANSWERED, answers)
                if cancelled():
                    self._asks.pop(run_id, None)
                    return WaitOutcome(CANCELLED)
                if stopping():
                    self._asks.pop(run_id, None)
                    return WaitOutcome(STOPPED)
                left = deadline - self._clock()
                if left <= 0:
                    self._asks.pop(run_id, None)
                    return WaitOutcome(TIMED_OUT)
                self._cond.wait(min(left, _TICK))


class ProvideInputHandler:
    """The ``provide_input`` kind for :meth:`agent.actions.ActionHandler.register`: hands the
    answers of a verified action to ``broker``; a refusal becomes an agent notice (through
    ``notice``) naming the run, the request and field names, never a value."""

    def __init__(self, broker: InputBroker, notice: Callable[[Outbox, str], str]) -> None:
        self._broker = broker
        self._notice = notice

    def __call__(self, action: VerifiedAction, outbox: Outbox) -> str:
        delivery = answers_from_params(action.params)
        label = f"Action {action.action_id} ({PROVIDE_INPUT})"
        refusal = self._broker.deliver(delivery.run_id, delivery.request_id, delivery.answers)
        if refusal:
            return self._notice(outbox, f"{label} refused: {refusal}")
        log.info(
            "%s: input for run %s delivered (fields %s)",
            label,
            delivery.run_id,
            ", ".join(sorted(delivery.answers)),
        )
        return "delivered"
