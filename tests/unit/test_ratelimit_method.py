"""Which mechanism enforces limits: ``auto`` asks the bridge for meter support,
a forced ``meter`` or ``policing`` is obeyed without asking, and choosing
policing on a kernel without tc's police action is logged as a warning (OVS
would accept the limits and drop nothing)."""

from __future__ import annotations

import logging

import pytest

from netplugin.config import load
from netplugin.dataplane import ratelimit as ratelimit_mod
from netplugin.dataplane.ratelimit import RateLimiter, tc_police_support
from netplugin.errors import InvalidRequest

WITH_POLICE = "CONFIG_NET_CLS_ACT=y\nCONFIG_NET_CLS_BASIC=m\nCONFIG_NET_ACT_POLICE=m\n"
# This machine's kernel, as /proc/config.gz says it.
WITHOUT_POLICE = ("CONFIG_NET_SCH_INGRESS=y\n# CONFIG_NET_CLS_BASIC is not set\nCONFIG_NET_CLS_ACT=y\n"
                  "# CONFIG_NET_ACT_POLICE is not set\n")


class Switch:
    def __init__(self):
        self.policing: dict[str, tuple[int, int]] = {}

    def ofport(self, port):
        return 4

    def port_exists(self, port):
        return True

    def set_policing(self, port, rate, burst):
        self.policing[port] = (rate, burst)


class Flows:
    bridge = "nptest0"

    def __init__(self, meters: bool):
        self.supported = meters
        self.asked = 0
        self.ports: list[tuple] = []

    def meters_supported(self):
        self.asked += 1
        return self.supported

    def set_port(self, endpoint_id, ofport, vlan, limit):
        self.ports.append((ofport, limit))

    def meters(self):
        return {4: {"rate_kbps": 1, "burst_kb": 1}}


def limiter(setting: str, meters: bool, kernel: str | None = WITH_POLICE):
    switch, flows = Switch(), Flows(meters)
    return RateLimiter(switch, flows, setting, kernel_config=lambda: kernel), switch, flows


@pytest.mark.parametrize("meters, chosen", [(True, "meter"), (False, "policing")])
def test_auto_asks_the_bridge_once(meters, chosen):
    rl, _, flows = limiter("auto", meters)
    assert rl.method == chosen and rl.method == chosen
    assert flows.asked == 1


@pytest.mark.parametrize("setting", ["meter", "policing"])
@pytest.mark.parametrize("meters", [True, False])
def test_a_forced_setting_is_obeyed_without_asking(setting, meters):
    rl, _, flows = limiter(setting, meters)
    assert rl.method == setting
    assert flows.asked == 0


def test_meter_puts_the_limit_in_the_flow_and_leaves_policing_alone():
    rl, switch, flows = limiter("auto", True)
    assert rl.apply("e" * 64, "npport", 100, (10_000, 2_500))
    assert flows.ports == [(4, (10_000, 2_500))] and switch.policing == {}
    assert rl.applied() == {4: {"rate_kbps": 1, "burst_kb": 1}}


@pytest.mark.parametrize("setting", ["auto", "policing"])
def test_policing_sets_the_interface_and_keeps_the_flow_without_meter(setting):
    rl, switch, flows = limiter(setting, False)
    assert rl.apply("e" * 64, "npport", 100, (10_000, 2_500))
    assert flows.ports == [(4, None)] and switch.policing == {"npport": (10_000, 2_500)}
    assert rl.apply("e" * 64, "npport", 100, None)
    assert switch.policing == {"npport": (0, 0)}       # lifted
    assert rl.applied() == {}


def test_the_setting_comes_from_the_environment_and_only_three_values_are_taken(tmp_path):
    assert load("/dev/null", env={}).rate_limit == "auto"
    for value in ("meter", "policing", "auto"):
        assert load("/dev/null", env={"NETPLUGIN_RATE_LIMIT": value}).rate_limit == value
    toml = tmp_path / "netplugin.toml"
    toml.write_text('rate_limit = "policing"\n')
    assert load(str(toml), env={}).rate_limit == "policing"
    with pytest.raises(InvalidRequest, match="must be auto, meter or policing"):
        load("/dev/null", env={"NETPLUGIN_RATE_LIMIT": "tc"})
    with pytest.raises(ValueError):
        RateLimiter(Switch(), Flows(True), "fast")


@pytest.mark.parametrize("text, support", [
    (WITH_POLICE, True),
    (WITHOUT_POLICE, False),
    ("CONFIG_NET_ACT_POLICE=y\nCONFIG_NET_CLS_MATCHALL=y\n", True),
    ("CONFIG_NET_ACT_POLICE=y\n# CONFIG_NET_CLS_BASIC is not set\n", False),   # nothing to hang it on
    ("CONFIG_NET_CLS_BASIC=y\n", False),
])
def test_tc_police_support_from_the_kernel_configuration(text, support):
    assert tc_police_support(text) is support


def test_unknown_kernel_configuration(monkeypatch):
    monkeypatch.setattr(ratelimit_mod.os.path, "isdir", lambda p: False)
    assert tc_police_support(None) is None


@pytest.mark.parametrize("setting, meters", [("auto", False), ("policing", True)])
def test_policing_without_tc_police_is_a_warning(caplog, setting, meters):
    rl, _, _ = limiter(setting, meters, kernel=WITHOUT_POLICE)
    with caplog.at_level(logging.INFO, logger=ratelimit_mod.__name__):
        assert rl.method == "policing"
        assert rl.method == "policing"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text          # once, not at every use
    text = warnings[0].getMessage()
    assert "NOT ENFORCED" in text and "nptest0" in text and "CONFIG_NET_ACT_POLICE" in text
    assert ("no OpenFlow meter support" if setting == "auto" else "set to policing") in text


def test_policing_with_tc_police_and_meters_give_no_warning(caplog):
    # policing where the kernel can police; meters (where tc police does not matter)
    for setting, meters, kernel in (("auto", False, WITH_POLICE), ("auto", True, WITHOUT_POLICE),
                                    ("meter", False, WITHOUT_POLICE)):
        rl, _, _ = limiter(setting, meters, kernel=kernel)
        with caplog.at_level(logging.INFO, logger=ratelimit_mod.__name__):
            rl.method
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "rate limits use policing on bridge nptest0" in caplog.text


def test_policing_on_a_kernel_that_cannot_be_read_is_a_warning_too(caplog, monkeypatch):
    monkeypatch.setattr(ratelimit_mod.os.path, "isdir", lambda p: False)
    rl, _, _ = limiter("auto", False, kernel=None)
    with caplog.at_level(logging.WARNING, logger=ratelimit_mod.__name__):
        rl.method
    assert "cannot be told" in caplog.text


def test_this_machines_kernel_is_read():
    """On a Linux machine the configuration is usually there; when it is, it parses."""
    text = ratelimit_mod.kernel_config()
    if text is not None:
        assert tc_police_support(text) in (True, False)
