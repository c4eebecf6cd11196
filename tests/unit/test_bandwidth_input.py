"""Negative amounts typed as `--rate -5mbit` or `--burst -1kb` (no '='): argparse
would take them for options and answer "expected one argument"; they reach the
rate and burst parsers instead, which say they are negative, and nothing is
stored. Options still work after them, and an unknown option is still refused."""

from __future__ import annotations

import pytest

from netplugin.errors import InvalidRequest
from netplugin.bandwidth import parse_burst, parse_rate

from .test_netctl import error, netctl, ok, sock, usage  # noqa: F401 - fixtures and helpers


@pytest.mark.parametrize("text", ["-5mbit", "-5", "-0.5gbit", " -5mbit", -5])
def test_a_negative_rate_says_so(text):
    with pytest.raises(InvalidRequest, match="is negative: a rate is 8kbit to 100gbit"):
        parse_rate(text)


def test_a_negative_burst_says_so():
    with pytest.raises(InvalidRequest, match="burst '-1kb' is negative"):
        parse_burst("-1kb", 10_000)


@pytest.mark.parametrize("argv, message", [
    (["profile", "create", "p1", "--rate", "-5mbit"], "rate '-5mbit' is negative"),
    (["profile", "create", "p1", "-b", "-5mbit"], "rate '-5mbit' is negative"),
    (["profile", "create", "p1", "--rate", "-5mbit", "--json"], "rate '-5mbit' is negative"),
    (["profile", "create", "p1", "--rate", "10mbit", "--burst", "-1kb"], "burst '-1kb' is negative"),
    (["profile", "set", "base", "--rate", "-5mbit"], "rate '-5mbit' is negative"),
    (["profile", "set", "base", "--burst", "-2mb"], "burst '-2mb' is negative"),
])
def test_negative_amounts_without_equals_are_clear_errors(netctl, argv, message):
    ok(netctl("profile", "create", "base", "--rate", "50mbit"))
    before = netctl("profile", "ls", "--json").json
    error(netctl(*argv), message)
    assert netctl("profile", "ls", "--json").json == before


def test_endpoint_set_negative_rate_is_a_clear_error(netctl):
    # No such endpoint here: the lookup comes first, but argparse no longer stops it.
    err = netctl("endpoint", "set", "abcdef", "--rate", "-5mbit")
    assert err.code == 1 and "expected one argument" not in err.err, err


def test_options_are_still_options(netctl):
    usage(netctl("profile", "create", "p1", "--rate", "-5mbit", "--bogus"), "unrecognized arguments: --bogus")
    usage(netctl("profile", "create", "p1", "--rate"), "expected one argument")
