"""The circuit breaker on its own, with a clock the tests move by hand."""

from __future__ import annotations

import pytest

from runner.breaker import BreakerConfig, BreakerState, CircuitBreaker
from runner.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**config: object) -> tuple[CircuitBreaker, Clock, list[tuple[str, str]]]:
    clock = Clock()
    changes: list[tuple[str, str]] = []
    breaker = CircuitBreaker(
        "m",
        BreakerConfig(**config),  # type: ignore[arg-type]
        clock=clock,
        on_change=lambda b, state, reason: changes.append((state.value, reason)),
    )
    return breaker, clock, changes


def state(breaker: CircuitBreaker) -> BreakerState:
    return breaker.state


def fail(breaker: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        permit = breaker.allow()
        assert permit is not None
        permit.failure("boom")


def succeed(breaker: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        permit = breaker.allow()
        assert permit is not None
        permit.success()


def test_consecutive_mode_opens_at_the_threshold() -> None:
    """N engine failures in a row open it; a success in between resets the count."""
    breaker, _, changes = make(mode="consecutive", consecutive=3)
    fail(breaker, 2)
    succeed(breaker)
    fail(breaker, 2)
    assert state(breaker) is BreakerState.CLOSED
    fail(breaker)
    assert state(breaker) is BreakerState.OPEN
    assert breaker.allow() is None and breaker.available() == 0
    assert changes == [("open", "boom")]


def test_rate_mode_needs_the_minimum_calls() -> None:
    """A failure rate counts only over at least `min_calls` outcomes in the window."""
    breaker, _, _ = make(mode="rate", failure_rate=0.5, min_calls=4, window=10)
    fail(breaker, 3)
    assert state(breaker) is BreakerState.CLOSED
    succeed(breaker)  # 3 of 4 failed, but a success never opens it
    assert state(breaker) is BreakerState.CLOSED
    fail(breaker)  # 4 of 5
    assert state(breaker) is BreakerState.OPEN


def test_rate_mode_window_slides() -> None:
    """Old outcomes leave the window: an old burst of failures does not count forever."""
    breaker, _, _ = make(mode="rate", failure_rate=0.5, min_calls=4, window=4)
    fail(breaker)
    succeed(breaker, 3)
    fail(breaker)  # window: S S S F -> 25 %
    assert state(breaker) is BreakerState.CLOSED


def test_half_open_probe_success_closes() -> None:
    """After the wait, one probe is admitted; its success closes the breaker."""
    breaker, clock, changes = make(mode="consecutive", consecutive=1, open_seconds=60, probes=1)
    fail(breaker)
    clock.now += 59.9
    assert state(breaker) is BreakerState.OPEN
    assert breaker.seconds_until_probe() == pytest.approx(0.1)
    clock.now += 0.1
    assert state(breaker) is BreakerState.HALF_OPEN
    probe = breaker.allow()
    assert probe is not None and probe.probe
    assert breaker.allow() is None  # only one probe at a time
    probe.success()
    assert state(breaker) is BreakerState.CLOSED
    assert [c[0] for c in changes] == ["open", "half_open", "closed"]


def test_half_open_probe_failure_reopens() -> None:
    """A failed probe opens the breaker again for another full wait."""
    breaker, clock, _ = make(mode="consecutive", consecutive=1, open_seconds=10)
    fail(breaker)
    clock.now += 10
    probe = breaker.allow()
    assert probe is not None
    probe.failure("still broken")
    assert state(breaker) is BreakerState.OPEN
    assert breaker.last_reason == "still broken"
    assert breaker.seconds_until_probe() == pytest.approx(10)


def test_hung_probe_is_cut_at_its_deadline() -> None:
    """A probe with no verdict by its deadline counts as failed: half-open never sticks."""
    breaker, clock, changes = make(
        mode="consecutive", consecutive=1, open_seconds=10, probe_seconds=30
    )
    fail(breaker)
    clock.now += 10
    hung = breaker.allow()
    assert hung is not None
    clock.now += 29
    assert state(breaker) is BreakerState.HALF_OPEN
    clock.now += 1
    assert state(breaker) is BreakerState.OPEN
    assert "no verdict" in changes[-1][1]
    hung.success()  # too late: it does not close the breaker
    assert state(breaker) is BreakerState.OPEN


def test_released_permits_and_stale_verdicts_do_not_count() -> None:
    """A job's own failure returns its permit; verdicts of jobs admitted before opening are
    ignored."""
    breaker, clock, _ = make(mode="consecutive", consecutive=2, open_seconds=5)
    early = breaker.allow()
    assert early is not None
    for _ in range(10):
        permit = breaker.allow()
        assert permit is not None
        permit.release()
    assert state(breaker) is BreakerState.CLOSED
    fail(breaker, 2)
    early.success()  # came back after the breaker opened
    assert state(breaker) is BreakerState.OPEN
    clock.now += 5
    probe = breaker.allow()
    assert probe is not None
    probe.release()  # the probe's job was a bad file: no verdict, probe slot free again
    assert state(breaker) is BreakerState.HALF_OPEN and breaker.available() == 1


def test_trip_opens_at_once() -> None:
    """A model that cannot load opens its breaker without waiting for a count."""
    breaker, _, changes = make()
    breaker.trip("cannot load model")
    assert state(breaker) is BreakerState.OPEN and changes == [("open", "cannot load model")]


def test_bounded_probes() -> None:
    """At most `probes` jobs run while half-open."""
    breaker, clock, _ = make(mode="consecutive", consecutive=1, open_seconds=1, probes=2)
    fail(breaker)
    clock.now += 1
    assert breaker.available() == 2
    first, second = breaker.allow(), breaker.allow()
    assert first and second and breaker.allow() is None and breaker.available() == 0
    first.success()
    assert state(breaker) is BreakerState.CLOSED


@pytest.mark.parametrize(
    "config",
    [{"mode": "sometimes"}, {"failure_rate": 0}, {"probes": 0}, {"open_seconds": 0}],
)
def test_impossible_settings_are_refused(config: dict[str, object]) -> None:
    """Settings that could never work are refused up front."""
    with pytest.raises(ConfigError):
        BreakerConfig(**config)  # type: ignore[arg-type]
