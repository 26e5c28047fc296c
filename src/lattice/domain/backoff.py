"""Reconnect backoff and heartbeat jitter: pure arithmetic on an injected random number.

``rand`` is always a float in ``[0, 1)`` supplied by the caller (``random.random()`` in the
adapters, fixed values in tests), so every schedule here is deterministic and testable.

Not guaranteed: anything about wall-clock behaviour; callers sleep for what these return.
"""

from __future__ import annotations

from attrs import field, frozen, validators


def _unit_interval(_instance: object, attribute: object, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{getattr(attribute, 'name', 'jitter')} must be within [0, 1]")


@frozen
class Backoff:
    """Exponential backoff with jitter.

    The ceiling for attempt ``n`` (0-based) is ``min(maximum, initial * multiplier**n)``; the
    delay is drawn from ``[ceiling * (1 - jitter), ceiling]``. ``jitter=1`` is "full jitter",
    which spreads a reconnect storm of many agents over the whole window.
    """

    initial: float = field(default=0.5, validator=validators.gt(0))
    maximum: float = field(default=30.0, validator=validators.gt(0))
    multiplier: float = field(default=2.0, validator=validators.ge(1))
    jitter: float = field(default=1.0, validator=_unit_interval)

    def ceiling(self, attempt: int) -> float:
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        # Cap the exponent so huge attempt counts do not overflow a float.
        ceiling = self.initial
        for _ in range(min(attempt, 64)):
            ceiling *= self.multiplier
            if ceiling >= self.maximum:
                return self.maximum
        return min(ceiling, self.maximum)

    def delay(self, attempt: int, rand: float) -> float:
        """The delay before reconnect attempt ``attempt``."""
        _check_rand(rand)
        ceiling = self.ceiling(attempt)
        floor = ceiling * (1.0 - self.jitter)
        return floor + (ceiling - floor) * rand


def jittered(interval: float, jitter: float, rand: float) -> float:
    """``interval`` spread uniformly over ``[interval * (1 - jitter), interval * (1 + jitter)]``."""
    if interval <= 0:
        raise ValueError("interval must be positive")
    _unit_interval(None, None, jitter)
    _check_rand(rand)
    return interval * (1.0 - jitter + 2.0 * jitter * rand)


def _check_rand(rand: float) -> None:
    if not 0.0 <= rand < 1.0:
        raise ValueError("rand must be within [0, 1)")
