"""The reconciler's settings (netplugin/config.py, wiring.py,
reconcile_cli.py): the OVSDB connect patience of the daemon and of the
reconciler, the dead-host release time and the tombstone age, from a file,
the environment and flags."""

from __future__ import annotations

import json

import pytest

from netplugin import reconcile_cli, wiring as backends
from netplugin.config import Config, load
from netplugin.dataplane.ovs import CONNECT_PATIENCE
from netplugin.errors import InvalidRequest


def test_defaults_let_the_reconciler_wait_for_a_big_ovsdb():
    cfg = load("/dev/null", env={})
    assert cfg.ovs_connect_timeout == CONNECT_PATIENCE == 15.0
    assert cfg.reconcile_ovs_connect_timeout >= 300.0
    assert cfg.reconcile_dead_host_after is None
    assert cfg.reconcile_tombstone_max_age == 7 * 86400


def test_settings_from_file_and_environment(tmp_path):
    path = tmp_path / "netplugin.toml"
    path.write_text("reconcile_ovs_connect_timeout = 90\nreconcile-dead-host-after = 3600\n"
                    "reconcile_tombstone_max_age = 86400\n")
    cfg = load(str(path), env={"NETPLUGIN_OVS_CONNECT_TIMEOUT": "20"})
    assert (cfg.ovs_connect_timeout, cfg.reconcile_ovs_connect_timeout) == (20.0, 90.0)
    assert cfg.reconcile_dead_host_after == 3600.0 and cfg.reconcile_tombstone_max_age == 86400.0
    env = {"NETPLUGIN_RECONCILE_DEAD_HOST_AFTER": "600", "NETPLUGIN_RECONCILE_OVS_CONNECT_TIMEOUT": "45"}
    cfg = load(str(path), env=env)
    assert cfg.reconcile_dead_host_after == 600.0 and cfg.reconcile_ovs_connect_timeout == 45.0


@pytest.mark.parametrize("key,value", [("ovs_connect_timeout", "0"), ("reconcile_ovs_connect_timeout", "-1"),
                                       ("reconcile_dead_host_after", "0"), ("reconcile_tombstone_max_age", "0")])
def test_non_positive_times_are_refused(key, value):
    with pytest.raises(InvalidRequest, match=key):
        load("/dev/null", env={"NETPLUGIN_" + key.upper(): value})


def test_the_daemon_and_the_reconciler_switches_get_their_patience():
    cfg = Config(ovs_connect_timeout=12.0, reconcile_ovs_connect_timeout=240.0).validate()
    assert backends.make_switch(cfg).connect_timeout == 12.0
    rcfg = backends.reconcile_settings(cfg)
    assert backends.make_switch(rcfg).connect_timeout == 240.0
    assert cfg.ovs_connect_timeout == 12.0                           # the daemon's own settings unchanged
    # a daemon setting above the reconciler's is kept: never less patient than the daemon
    assert backends.reconcile_settings(Config(ovs_connect_timeout=500.0)).ovs_connect_timeout == 500.0


class Recorder:
    def __init__(self):
        self.kwargs = None

    def run(self, **kwargs):
        self.kwargs = kwargs
        return {"host": "h1", "dry_run": True, "status": "done", "findings": [], "released": 0, "repaired": 0,
                "errors": 0, "duration_ms": 1.0, "docker": "ok"}


@pytest.fixture
def cli(monkeypatch, tmp_path):
    """netplugin-reconcile with its reconciler replaced."""
    seen = {}
    recorder = Recorder()

    def make_reconciler(cfg):
        seen["cfg"] = cfg
        return recorder
    monkeypatch.setattr(backends, "make_reconciler", make_reconciler)
    for key in ("RECONCILE_DEAD_HOST_AFTER", "RECONCILE_OVS_CONNECT_TIMEOUT", "OVS_CONNECT_TIMEOUT"):
        monkeypatch.delenv("NETPLUGIN_" + key, raising=False)
    path = tmp_path / "netplugin.toml"
    return SimpleCli(path, recorder, seen)


class SimpleCli:
    def __init__(self, path, recorder, seen):
        self.path, self.recorder, self.seen = path, recorder, seen

    def run(self, *argv: str, settings: str = "") -> dict:
        self.path.write_text(settings)
        assert reconcile_cli.main(["--config", str(self.path), "--json", *argv]) == 0
        return self.recorder.kwargs


def test_the_command_takes_the_dead_host_time_from_the_settings(cli, capsys):
    assert cli.run()["dead_host_after"] is None                                       # off by default
    assert cli.run(settings="reconcile_dead_host_after = 7200\n")["dead_host_after"] == 7200.0
    assert cli.run("--dead-host-after", "60", settings="reconcile_dead_host_after = 7200\n")[
        "dead_host_after"] == 60.0                                                    # the flag wins
    kwargs = cli.run(settings="reconcile_tombstone_max_age = 3600\n")
    assert kwargs["tombstone_max_age"] == 3600.0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["status"] == "done"


def test_the_command_builds_its_switch_with_the_reconcilers_patience(cli):
    cli.run(settings="reconcile_ovs_connect_timeout = 222\n")
    assert cli.seen["cfg"].ovs_connect_timeout == 222.0
    assert backends.make_switch(cli.seen["cfg"]).connect_timeout == 222.0
