"""Records read from etcd that failed their checks: each is skipped by
whoever read it, logged once per key and per problem (not once per pass), and
counted for the metrics (``netplugin_bad_records_total`` by kind, and the
gauge of those bad right now)."""

from __future__ import annotations

import logging
import threading

from .logs import escape

log = logging.getLogger("netplugin.records")


class BadRecords:
    """What this process has found bad, by key; thread-safe."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet          # a tool listing them (netctl status) prints them itself
        self._lock = threading.Lock()
        self._bad: dict[str, tuple[str, str]] = {}     # key -> (kind, what is wrong)
        self._total: dict[str, int] = {}                # kind -> bad records ever met

    def found(self, key: str, kind: str, problem: str) -> None:
        """Note a bad record; logged and counted only when new (or its problem changed)."""
        with self._lock:
            if self._bad.get(key) == (kind, problem):
                return
            self._bad[key] = (kind, problem)
            self._total[kind] = self._total.get(kind, 0) + 1
        if not self.quiet:
            log.warning("skipping bad %s record %s: %s", kind, escape(key), escape(problem))

    def fine(self, key: str) -> None:
        """A key read fine (or deleted): it no longer counts as bad."""
        if key in self._bad:
            with self._lock:
                self._bad.pop(key, None)

    def current(self) -> dict[str, tuple[str, str]]:
        with self._lock:
            return dict(self._bad)

    def totals(self) -> dict[str, int]:
        with self._lock:
            return dict(self._total)
