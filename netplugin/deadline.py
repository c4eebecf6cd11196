"""A per-request deadline. Docker sets no timeout on plugin calls, so a
handler that waited forever would hang the user's ``docker run``: every
handler runs within a deadline, and long use cases check it between steps
(rolling back what they did when it has passed)."""

from __future__ import annotations

import contextlib
import contextvars
import time

from .errors import DeadlineExceeded

_deadline: contextvars.ContextVar[tuple[float, float] | None] = contextvars.ContextVar("deadline", default=None)


@contextlib.contextmanager
def within(seconds: float):
    token = _deadline.set((time.monotonic() + seconds, seconds))
    try:
        yield
    finally:
        _deadline.reset(token)


def check(step: str) -> None:
    """Raise DeadlineExceeded if the current request is out of time."""
    current = _deadline.get()
    if current and time.monotonic() > current[0]:
        raise DeadlineExceeded(f"the call ran past its {current[1]:.0f} s deadline while {step}; "
                               "what it had done was undone: check etcd and Open vSwitch, then retry")


def remaining(default: float) -> float:
    """Seconds left in the current request's deadline, or default outside a request."""
    current = _deadline.get()
    if current is None:
        return default
    return max(0.0, current[0] - time.monotonic())
