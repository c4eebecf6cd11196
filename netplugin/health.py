"""Is this daemon able to work: can it reach etcd and OVSDB, and does it
hold its view of etcd (hostview.py)?"""

from __future__ import annotations

import time

from .errors import NetpluginError


def check(store, switch, bridge: str, view=None) -> dict:
    """``{"healthy": true, "etcd": {"ok": true, "ms": 1.2}, "ovsdb": {"ok": true, "ms": 0.8},
    "view": {"ok": true, "ready": true, "networks_followed": 2, "endpoints": 41, "revision": 9120}}``
    (one small etcd read: the ping; the view is read from memory)."""
    result: dict = {}
    for name, probe in (("etcd", store.ping),
                        ("ovsdb", lambda: switch.bridge_exists(bridge))):
        started = time.monotonic()
        try:
            probe()
            result[name] = {"ok": True}
        except NetpluginError as exc:
            result[name] = {"ok": False, "error": exc.message}
        result[name]["ms"] = round((time.monotonic() - started) * 1000, 1)
    if view is not None:
        status = view.status()
        result["view"] = {"ok": status["ready"], **status}
    result["healthy"] = all(part["ok"] for part in result.values())
    return result
