"""Commands and processes: run an argument list (never a shell string), stop a
process group, find free ports, poll until something holds."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Failed(AssertionError, RuntimeError):
    """A harness step failed: a test failure to pytest, a RuntimeError to a benchmark."""


def run(args: list[str], check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """Run an argument list; with check, a non-zero exit raises Failed showing its output."""
    proc = subprocess.run(args, check=False, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise Failed(f"{' '.join(args)} exited {proc.returncode}\nstdout: {proc.stdout[-2000:]}\n"
                     f"stderr: {proc.stderr[-2000:]}")
    return proc


def stop_group(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, grace: float = 10) -> None:
    """Signal the process group led by proc (started with start_new_session) and
    wait; SIGKILL the group when it outlives grace seconds."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (bound at once, so distinct)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def wait_until(check: Callable[[], T], timeout: float, every: float = 0.2) -> T:
    """check's first truthy result, or its last result when timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(every)


def tail(path, chars: int = 3000) -> str:
    """The end of a log file, or '(no log)'."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4 * chars))
            return fh.read().decode(errors="replace")[-chars:]
    except OSError:
        return "(no log)"
