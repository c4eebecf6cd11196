"""Bandwidth profiles: parsing what operators type, and which limit applies
to an endpoint.

Rates are bits per second as tc writes them: ``500kbit``, ``100mbit``,
``1gbit`` (``100mbps`` is refused: in tc it means megabytes, elsewhere
megabits). Bursts are sizes: ``256kb``, ``2mb`` (bytes) or ``512kbit``.

The default burst is 250 ms of the rate. A policer drops what exceeds the
bucket, and TCP, which sends in bursts at line rate, only reaches the
configured rate when the bucket holds a few hundred milliseconds of it (with
20 ms, a 50 Mbit/s limit gave TCP 6 Mbit/s; with 250 ms, 48 Mbit/s).
"""

from __future__ import annotations

import re

from .errors import InvalidRequest, NotFound
from .model import Endpoint, Network, Profile, check_name

MAX_RATE_KBPS = 100_000_000          # 100 Gbit/s
MIN_RATE_KBPS = 8                    # 8 kbit/s: below that a meter is meaningless
MIN_BURST_KB = 12                    # one 1500-byte frame
MAX_BURST_SECONDS = 10               # a bucket of more than 10 s of the rate is no limit at all
MAX_BURST_KB = 8_000_000             # 1 GB
DEFAULT_BURST_SECONDS = 0.25

_RATE_UNITS = {"bit": 1 / 1000, "kbit": 1, "mbit": 1000, "gbit": 1_000_000}
_SIZE_UNITS = {"b": 8 / 1000, "kb": 8, "mb": 8000, "gb": 8_000_000, "kbit": 1, "mbit": 1000}
_AMOUNT_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]+)\s*")


def parse_rate(text: object) -> int:
    """'100mbit' -> 100000 (kbit/s)."""
    if isinstance(text, (str, int, float)) and str(text).strip().startswith("-"):
        raise InvalidRequest(f"rate {text!r} is negative: a rate is {MIN_RATE_KBPS}kbit to 100gbit, "
                             "such as 500kbit, 100mbit or 1gbit")
    m = _AMOUNT_RE.fullmatch(str(text).lower()) if isinstance(text, (str, int, float)) else None
    if m is None or m.group(2) not in _RATE_UNITS:
        hint = " ('mbps' is ambiguous: say mbit)" if m and m.group(2).endswith("bps") else ""
        raise InvalidRequest(f"rate {text!r} is not a rate such as 500kbit, 100mbit or 1gbit{hint}")
    kbps = float(m.group(1)) * _RATE_UNITS[m.group(2)]
    if kbps < MIN_RATE_KBPS:
        raise InvalidRequest(f"rate {text!r} is too low: the smallest limit is {MIN_RATE_KBPS}kbit")
    if kbps > MAX_RATE_KBPS:
        raise InvalidRequest(f"rate {text!r} is above 100gbit: leave the limit off instead")
    return round(kbps)


def parse_burst(text: object, rate_kbps: int) -> int:
    """'256kb' -> 2048 (kbit); None or '' -> 250 ms of the rate."""
    if text in (None, ""):
        return max(MIN_BURST_KB, int(rate_kbps * DEFAULT_BURST_SECONDS))
    if str(text).strip().startswith("-"):
        raise InvalidRequest(f"burst {text!r} is negative: a burst is a size such as 256kb, 2mb or 512kbit")
    m = _AMOUNT_RE.fullmatch(str(text).lower())
    if m is None or m.group(2) not in _SIZE_UNITS:
        raise InvalidRequest(f"burst {text!r} is not a size such as 256kb, 2mb or 512kbit")
    kb = round(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    if kb < MIN_BURST_KB:
        raise InvalidRequest(f"burst {text!r} is smaller than one 1500-byte frame")
    if kb > min(MAX_BURST_KB, rate_kbps * MAX_BURST_SECONDS):
        raise InvalidRequest(f"burst {text!r} is more than {MAX_BURST_SECONDS} s of the rate (or 1 GB): "
                             "that is no limit; choose a smaller burst")
    return kb


def make_profile(name: str, rate: object, burst: object = None) -> Profile:
    check_name(name, "profile name")
    rate_kbps = parse_rate(rate)
    return Profile(name=name, rate_kbps=rate_kbps, burst_kb=parse_burst(burst, rate_kbps))


def effective_limit(ep: Endpoint, net: Network | None, profiles: dict[str, Profile]) -> tuple[int, int] | None:
    """(rate kbit/s, burst kbit) for the endpoint, or None: its own limit wins over its network's."""
    own = ep.limit or {}
    if own.get("rate_kbps"):
        return int(own["rate_kbps"]), int(own["burst_kb"])
    name = own.get("profile") or (net.profile if net else "")
    prof = profiles.get(name) if name else None
    return (prof.rate_kbps, prof.burst_kb) if prof else None


def require_profile(profiles: dict[str, Profile], name: str) -> Profile:
    if name not in profiles:
        raise NotFound(f"profile {name!r} does not exist: see 'netctl profile ls'")
    return profiles[name]


def human_rate(kbps: int) -> str:
    for unit, size in (("gbit", 1_000_000), ("mbit", 1000)):
        if kbps >= size and kbps % (size // 10 or 1) == 0:
            return f"{kbps / size:g}{unit}"
    return f"{kbps}kbit"
