"""The managed (v2) plugin takes etcd TLS and a password: its config.json lets
them be set (files through a read-only mount, the password as a file named by
a flag, never as a value docker plugin inspect shows), and
packaging/managed/check_settings.py applies netplugin's own rules
(netplugin/etcd_access.py) to the plugin's settings before enable."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = json.loads((REPO / "packaging" / "managed" / "config.json").read_text())
_spec = importlib.util.spec_from_file_location("check_settings", REPO / "packaging" / "managed" / "check_settings.py")
assert _spec and _spec.loader
check_settings = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_settings)
MOUNT = "/etc/netplugin/etcd"


def test_config_lets_tls_files_user_and_password_file_be_set():
    env = {e["name"]: e for e in CONFIG["env"]}
    for name in ("NETPLUGIN_ETCD_CACERT", "NETPLUGIN_ETCD_CERT", "NETPLUGIN_ETCD_KEY", "NETPLUGIN_ETCD_USER"):
        assert env[name]["settable"] == ["value"] and env[name]["value"] == "", name
    assert "NETPLUGIN_ETCD_PASSWORD" not in env          # docker plugin inspect would show it to anyone
    assert CONFIG["args"]["settable"] == ["value"] and CONFIG["args"]["value"] == []
    mount = next(m for m in CONFIG["mounts"] if m["name"] == "etcd-credentials")
    assert (mount["source"], mount["destination"], mount["settable"]) == (MOUNT, MOUNT, ["source"])
    assert "ro" in mount["options"]


def inspect(tmp_path: Path, args: list[str] | None = None, **env: str) -> dict:
    """What docker plugin inspect shows: the config's defaults, then the values set."""
    values = {e["name"]: e.get("value", "") for e in CONFIG["env"]} | env
    mounts = [dict(m, source=str(tmp_path) if m["name"] == "etcd-credentials" else m["source"])
              for m in CONFIG["mounts"]]
    return {"Settings": {"Env": [f"{k}={v}" for k, v in values.items()], "Args": args or [],
                         "Mounts": [{"Name": m["name"], "Source": m["source"], "Destination": m["destination"]}
                                    for m in mounts]}}


@pytest.fixture
def creds(tmp_path):
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("x\n")
    (tmp_path / "password").write_text("s3cret\n")
    return tmp_path


def test_defaults_pass(creds):
    assert check_settings.problems(inspect(creds)) == []


def test_tls_with_client_certificate_and_password_file_pass(creds):
    settings = inspect(creds, ["--password-file", f"{MOUNT}/password"],
                       NETPLUGIN_ETCD_ENDPOINTS="https://10.0.0.1:2379,https://10.0.0.2:2379",
                       NETPLUGIN_ETCD_CACERT=f"{MOUNT}/ca.pem", NETPLUGIN_ETCD_CERT=f"{MOUNT}/client.pem",
                       NETPLUGIN_ETCD_KEY=f"{MOUNT}/client.key", NETPLUGIN_ETCD_USER="netplugin")
    assert check_settings.problems(settings) == []


@pytest.mark.parametrize(("args", "env", "says"), [
    # etcd_access.py's rules, as the daemon applies them
    (["--password-file", f"{MOUNT}/password"], {"NETPLUGIN_ETCD_USER": "np",
                                                "NETPLUGIN_ETCD_ENDPOINTS": "http://10.0.0.1:2379"},
     "etcd_password would be sent in clear"),
    ([], {"NETPLUGIN_ETCD_ENDPOINTS": "http://10.0.0.1:2379", "NETPLUGIN_ETCD_CACERT": f"{MOUNT}/ca.pem"},
     "the TLS files would be ignored"),
    ([], {"NETPLUGIN_ETCD_ENDPOINTS": "https://10.0.0.1:2379", "NETPLUGIN_ETCD_CERT": f"{MOUNT}/client.pem"},
     "etcd_cert and etcd_key go together"),
    ([], {"NETPLUGIN_ETCD_USER": "np", "NETPLUGIN_ETCD_ENDPOINTS": "https://10.0.0.1:2379"},
     "etcd_user and etcd_password go together"),
    # files: through the mount, and there
    ([], {"NETPLUGIN_ETCD_ENDPOINTS": "https://10.0.0.1:2379", "NETPLUGIN_ETCD_CACERT": "/root/ca.pem"},
     "not under a folder mounted into the plugin"),
    ([], {"NETPLUGIN_ETCD_ENDPOINTS": "https://10.0.0.1:2379", "NETPLUGIN_ETCD_CACERT": f"{MOUNT}/nope.pem"},
     "there is no such file"),
    ([f"--password-file={MOUNT}/absent"], {"NETPLUGIN_ETCD_USER": "np"}, "there is no such file"),
])
def test_what_the_daemon_would_refuse_is_named(creds, args, env, says):
    found = check_settings.problems(inspect(creds, args, **env))
    assert len(found) == 1 and says in found[0], found


def test_a_password_given_as_a_flag_is_refused(creds, capsys):
    found = check_settings.problems(inspect(creds, ["--password", "s3cret"]))
    assert len(found) == 1 and "not flags the daemon takes" in found[0]
