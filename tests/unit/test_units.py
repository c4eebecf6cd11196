"""The systemd units as install.sh lays them out (paths rewritten to this
venv's scripts) pass ``systemd-analyze verify`` without a warning; the
daemon's unit waits for readiness (Type=notify) and the drctl agent's unit
restarts and comes after the network plugin."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNITS = ("netplugin.service", "netplugin-reconcile.service", "netplugin-reconcile.timer", "drctl-agent.service")


def unit(name: str) -> configparser.ConfigParser:
    cfg = configparser.ConfigParser(strict=False, interpolation=None)
    cfg.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    cfg.read(REPO / "systemd" / name)
    return cfg


def test_units_pass_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (Debian: systemd)"
    bin_dir = Path(sys.executable).parent
    for name in UNITS:
        text = (REPO / "systemd" / name).read_text().replace("/usr/local/bin/", f"{bin_dir}/")
        (tmp_path / name).write_text(text)
    proc = subprocess.run([analyze, "verify", *(str(tmp_path / n) for n in UNITS)], check=False, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if str(tmp_path) in line]
    assert ours == [], ours


def test_installer_and_uninstaller_know_every_unit():
    assert sorted(p.name for p in (REPO / "systemd").iterdir()) == sorted(UNITS)
    for script in ("install.sh", "uninstall.sh"):
        text = (REPO / "scripts" / script).read_text()
        missing = [n for n in UNITS if n not in text]
        assert missing == [], f"{script} does not handle {missing}"


def test_daemon_unit_waits_for_readiness():
    service = unit("netplugin.service")["Service"]
    assert service["Type"] == "notify"
    assert service.get("NotifyAccess", "main") == "main"      # the arbiter, the main process, notifies
    assert "docker.service" in unit("netplugin.service")["Unit"]["Before"]


def test_agent_unit_restarts_after_the_plugin():
    cfg = unit("drctl-agent.service")
    assert {"netplugin.service", "docker.service"} <= set(cfg["Unit"]["After"].split())
    assert "netplugin.service" in cfg["Unit"]["Wants"].split()
    assert cfg["Service"]["Restart"] in ("on-failure", "always")
    assert cfg["Service"]["ExecStart"].split()[:2] == ["/usr/local/bin/drctl", "agent"]
    assert cfg["Install"]["WantedBy"] == "multi-user.target"
