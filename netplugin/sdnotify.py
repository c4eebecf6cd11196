"""systemd's readiness notification (``Type=notify``): one datagram to the
socket that ``$NOTIFY_SOCKET`` names. The daemon takes the variable away from
gunicorn and sends ``READY=1`` itself, once its socket listens with the right
owner and mode, so systemd (and units ordered after it, such as Docker) never
start against a socket that is not ready."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def take_socket(environ: dict[str, str] | None = None) -> str | None:
    """Remove NOTIFY_SOCKET from the environment and return it: no other code
    (gunicorn's arbiter, a worker, a child) may notify in the daemon's name."""
    env = os.environ if environ is None else environ
    return env.pop("NOTIFY_SOCKET", None) or None


def notify(address: str | None, state: str) -> bool:
    """Send state (e.g. ``READY=1``) to address; False when there is none or it failed."""
    if not address:
        return False
    if address[0] not in ("/", "@"):
        log.warning("NOTIFY_SOCKET %r is neither a path nor an abstract name: not notifying", address)
        return False
    target = "\0" + address[1:] if address[0] == "@" else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("could not notify systemd at %s (%s): %s", address, state.split("\n")[0], exc)
        return False
    return True
