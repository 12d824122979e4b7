"""An async circuit breaker for the engine: stop taking jobs while the model itself is failing.

Closed: every job may run; engine failures are counted. When they cross the threshold the breaker
opens: the worker stops reading jobs (it does not fail them). After `open_seconds` it turns
half-open and admits a bounded number of probes; a probe that succeeds closes it, one that fails
or outlives its deadline opens it again. Only engine failures count: a bad file says nothing
about the model.

Two ways to decide "failing", as in resilience4j and the original service:
- rate (default): at least `min_calls` outcomes in the last `window` and a failure rate of at
  least `failure_rate`;
- consecutive: `consecutive` engine failures in a row.

Every method runs on the event loop and none awaits, so concurrent job slots cannot interleave
inside a transition. Time is monotonic.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from .errors import ConfigError

__all__ = ["BreakerConfig", "BreakerState", "CircuitBreaker", "Permit"]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """When the breaker opens, and how it tries again."""

    #: `rate` or `consecutive`.
    mode: str = "rate"
    #: rate mode: the share of failures among the last `window` outcomes that opens it.
    failure_rate: float = 0.5
    window: int = 20
    #: rate mode: no verdict on fewer outcomes than this.
    min_calls: int = 5
    #: consecutive mode: failures in a row that open it.
    consecutive: int = 5
    #: Seconds open before probing.
    open_seconds: float = 60.0
    #: Probes admitted at once while half-open.
    probes: int = 1
    #: A probe without a verdict after this long counts as a failure.
    probe_seconds: float = 120.0

    def __post_init__(self) -> None:
        if self.mode not in ("rate", "consecutive"):
            raise ConfigError(f"breaker mode {self.mode!r} must be 'rate' or 'consecutive'")
        if not 0 < self.failure_rate <= 1:
            raise ConfigError("breaker failure rate must be in (0, 1]")
        if min(self.window, self.min_calls, self.consecutive, self.probes) < 1:
            raise ConfigError("breaker window, min calls, consecutive and probes must be >= 1")
        if self.open_seconds <= 0 or self.probe_seconds <= 0:
            raise ConfigError("breaker open and probe seconds must be positive")


class Permit:
    """Leave to run one job on the engine; report how the engine did, once."""

    __slots__ = ("_breaker", "_done", "deadline", "probe")

    def __init__(self, breaker: CircuitBreaker, probe: bool, deadline: float | None) -> None:
        self._breaker = breaker
        self._done = False
        self.probe = probe
        self.deadline = deadline

    def success(self) -> None:
        """The engine worked (it produced output)."""
        if not self._done:
            self._done = True
            self._breaker._record(self, ok=True)

    def failure(self, reason: str = "") -> None:
        """The engine failed."""
        if not self._done:
            self._done = True
            self._breaker._record(self, ok=False, reason=reason)

    def release(self) -> None:
        """No verdict (the job's own fault, or it stopped early): the permit is returned."""
        if not self._done:
            self._done = True
            self._breaker._forget(self)


class CircuitBreaker:
    """One breaker per model and process."""

    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[CircuitBreaker, BreakerState, str], None] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._outcomes: deque[bool] = deque(maxlen=config.window)
        self._streak = 0
        self._opened_at = 0.0
        self._probes: list[Permit] = []
        self.last_reason = ""

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker turns half-open once its wait is over)."""
        self._tick()
        return self._state

    def seconds_until_probe(self) -> float:
        """How long an open breaker stays shut (0 when it admits probes or is closed)."""
        self._tick()
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.config.open_seconds - self._clock())

    def available(self) -> int | None:
        """How many jobs may start now: None for no limit (closed), else a number (maybe 0)."""
        self._tick()
        if self._state is BreakerState.CLOSED:
            return None
        if self._state is BreakerState.OPEN:
            return 0
        return self.config.probes - len(self._probes)

    def allow(self) -> Permit | None:
        """A permit to run one job, or None while the breaker is open (or its probes are out)."""
        self._tick()
        if self._state is BreakerState.CLOSED:
            return Permit(self, probe=False, deadline=None)
        if self._state is BreakerState.HALF_OPEN and len(self._probes) < self.config.probes:
            permit = Permit(self, probe=True, deadline=self._clock() + self.config.probe_seconds)
            self._probes.append(permit)
            return permit
        return None

    def trip(self, reason: str) -> None:
        """Open now, whatever the counts say (the model cannot even be loaded)."""
        self._open(reason)

    # -- internals ----------------------------------------------------------------------------

    def _tick(self) -> None:
        now = self._clock()
        if self._state is BreakerState.OPEN and now >= self._opened_at + self.config.open_seconds:
            self._set(BreakerState.HALF_OPEN, "wait over; probing")
        elif self._state is BreakerState.HALF_OPEN:
            for permit in list(self._probes):
                if permit.deadline is not None and now >= permit.deadline:
                    # A probe that hangs must not hold the breaker half-open.
                    permit.failure(f"probe gave no verdict in {self.config.probe_seconds:g} s")
                    return

    def _record(self, permit: Permit, *, ok: bool, reason: str = "") -> None:
        if permit.probe:
            if permit in self._probes:
                self._probes.remove(permit)
            if self._state is BreakerState.HALF_OPEN:
                if ok:
                    self._close()
                else:
                    self._open(reason or "probe failed")
            return
        if self._state is not BreakerState.CLOSED:
            return  # a job admitted before the breaker opened: its verdict is stale
        self._outcomes.append(ok)
        self._streak = 0 if ok else self._streak + 1
        if not ok and self._failing():
            self._open(reason or "engine failures")

    def _forget(self, permit: Permit) -> None:
        if permit in self._probes:
            self._probes.remove(permit)

    def _failing(self) -> bool:
        c = self.config
        if c.mode == "consecutive":
            return self._streak >= c.consecutive
        calls = len(self._outcomes)
        failures = calls - sum(self._outcomes)
        return calls >= c.min_calls and failures / calls >= c.failure_rate

    def _open(self, reason: str) -> None:
        self._opened_at = self._clock()
        self._probes.clear()
        self.last_reason = reason
        self._set(BreakerState.OPEN, reason)

    def _close(self) -> None:
        self._outcomes.clear()
        self._streak = 0
        self.last_reason = ""
        self._set(BreakerState.CLOSED, "probe succeeded")

    def _set(self, state: BreakerState, reason: str) -> None:
        if state is self._state and state is not BreakerState.OPEN:
            return
        self._state = state
        if self._on_change is not None:
            self._on_change(self, state, reason)
