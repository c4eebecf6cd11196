"""Settings: defaults < TOML file < NETPLUGIN_* environment < flags."""

from __future__ import annotations

import os
import socket

import pytest

from netplugin import config as config_mod
from netplugin.config import Config, load
from netplugin.daemon import settings
from netplugin.errors import InvalidRequest


@pytest.fixture
def no_default_file(monkeypatch, tmp_path):
    """Point the default config file at a path that does not exist, and keep
    the machine's own NETPLUGIN_* variables out of the tests."""
    monkeypatch.setattr(config_mod, "DEFAULT_CONFIG_FILE", str(tmp_path / "absent.toml"))
    for name in [n for n in os.environ if n.startswith("NETPLUGIN_")]:
        monkeypatch.delenv(name)
    return tmp_path


def test_defaults(no_default_file):
    cfg = load(env={})
    assert cfg == Config()
    assert cfg.etcd_endpoints == ["http://127.0.0.1:2379"]
    assert cfg.etcd_prefix == "/netplugin/v1"
    assert cfg.host_id == socket.gethostname()
    assert (cfg.bridge, cfg.datapath_type, cfg.uplink, cfg.mtu) == ("netplugin0", "system", None, 1500)
    assert cfg.socket == "/run/docker/plugins/netplugin.sock"
    assert cfg.handler_deadline == 20.0 and cfg.etcd_timeout == 3.0


def test_toml_file(no_default_file):
    path = no_default_file / "np.toml"
    path.write_text('etcd_endpoints = ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]\n'
                    'host-id = "db-host-17"\nbridge = "br-np"\ndatapath_type = "netdev"\n'
                    'uplink = "bond0"\nmtu = 9000\netcd_timeout = 1.5\n')
    cfg = load(str(path), env={})
    assert cfg.etcd_endpoints == ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
    assert (cfg.host_id, cfg.bridge, cfg.datapath_type, cfg.uplink, cfg.mtu, cfg.etcd_timeout) == \
        ("db-host-17", "br-np", "netdev", "bond0", 9000, 1.5)


def test_default_file_is_read_when_present(no_default_file, monkeypatch):
    path = no_default_file / "default.toml"
    path.write_text('bridge = "fromdefault"\n')
    monkeypatch.setattr(config_mod, "DEFAULT_CONFIG_FILE", str(path))
    assert load(env={}).bridge == "fromdefault"


def test_config_file_from_environment(no_default_file):
    path = no_default_file / "env.toml"
    path.write_text('bridge = "fromenvfile"\n')
    assert load(env={"NETPLUGIN_CONFIG": str(path)}).bridge == "fromenvfile"


def test_environment(no_default_file):
    cfg = load(env={"NETPLUGIN_ETCD_ENDPOINTS": "http://10.0.0.1:2379, http://10.0.0.2:2379",
                    "NETPLUGIN_HOST_ID": "h-env", "NETPLUGIN_MTU": "1400", "NETPLUGIN_ETCD_TIMEOUT": "0.5",
                    "NETPLUGIN_DATAPATH_TYPE": "netdev", "NETPLUGIN_BRIDGE": "", "OTHER_MTU": "600"})
    assert cfg.etcd_endpoints == ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
    assert (cfg.host_id, cfg.mtu, cfg.etcd_timeout, cfg.datapath_type) == ("h-env", 1400, 0.5, "netdev")
    assert cfg.bridge == "netplugin0"     # an empty variable is ignored


def test_precedence_file_env_flags(no_default_file):
    path = no_default_file / "np.toml"
    path.write_text('host_id = "from-file"\nbridge = "brfile"\nmtu = 9000\n')
    cfg = load(str(path), env={"NETPLUGIN_HOST_ID": "from-env", "NETPLUGIN_BRIDGE": "brenv"},
               overrides={"host_id": "from-flag", "mtu": None})
    assert (cfg.host_id, cfg.bridge, cfg.mtu) == ("from-flag", "brenv", 9000)


def test_daemon_flags_override(no_default_file, monkeypatch):
    monkeypatch.setenv("NETPLUGIN_BRIDGE", "brenv")
    monkeypatch.setenv("NETPLUGIN_HOST_ID", "h-env")
    cfg = settings(["--bridge", "brflag", "--mtu", "1450", "--etcd-endpoints", "http://10.1.1.1:2379",
                    "--datapath-type", "netdev"])
    assert (cfg.bridge, cfg.mtu, cfg.host_id, cfg.datapath_type) == ("brflag", 1450, "h-env", "netdev")
    assert cfg.etcd_endpoints == ["http://10.1.1.1:2379"]


@pytest.mark.parametrize("name,text,message", [
    ("nope.toml", None, "nope.toml does not exist"),
    ("bad.toml", "bridge = [unclosed\n", "cannot read config file"),
    ("np.toml", 'brige = "typo"\n', "unknown setting 'brige'"),
    ("np.toml", 'mtu = "jumbo"\n', "setting mtu must be a whole number"),
], ids=["missing-file-that-was-asked-for", "bad-toml", "unknown-setting", "bad-value-names-setting"])
def test_file_problems_are_named(no_default_file, name, text, message):
    path = no_default_file / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(InvalidRequest) as exc:
        load(str(path), env={})
    assert message in exc.value.message


@pytest.mark.parametrize("env,setting", [
    ({"NETPLUGIN_MTU": "big"}, "mtu"),
    ({"NETPLUGIN_MTU": "100"}, "mtu"),
    ({"NETPLUGIN_MTU": "10000"}, "mtu"),
    ({"NETPLUGIN_ETCD_TIMEOUT": "soon"}, "etcd_timeout"),
    ({"NETPLUGIN_THREADS": "many"}, "threads"),
    ({"NETPLUGIN_HOST_ID": "bad host"}, "host_id"),
    ({"NETPLUGIN_BRIDGE": "a-bridge-name-too-long"}, "bridge"),
    ({"NETPLUGIN_BRIDGE": "br;rm -rf"}, "bridge"),
    ({"NETPLUGIN_UPLINK": "eth 0"}, "uplink"),
    ({"NETPLUGIN_DATAPATH_TYPE": "dpdk"}, "datapath_type"),
    ({"NETPLUGIN_ETCD_ENDPOINTS": "10.0.0.1:2379"}, "etcd endpoint"),
    ({"NETPLUGIN_ETCD_ENDPOINTS": "http://10.0.0.1"}, "etcd endpoint"),
    ({"NETPLUGIN_ETCD_ENDPOINTS": ","}, "etcd_endpoints"),
    ({"NETPLUGIN_ETCD_PREFIX": "netplugin"}, "etcd_prefix"),
    ({"NETPLUGIN_ETCD_PREFIX": "/netplugin/"}, "etcd_prefix"),
    ({"NETPLUGIN_ETCD_USER": "root"}, "etcd_user"),
    ({"NETPLUGIN_ETCD_CERT": "/c.pem"}, "etcd_cert"),
])
def test_bad_values_name_the_setting(no_default_file, env, setting):
    with pytest.raises(InvalidRequest) as exc:
        load(env=env)
    assert setting in exc.value.message


@pytest.mark.parametrize("env,setting", [
    ({"NETPLUGIN_LOG_LEVEL": "LOUD"}, "log_level"),
    ({"NETPLUGIN_HANDLER_DEADLINE": "0"}, "handler_deadline"),
    ({"NETPLUGIN_HANDLER_DEADLINE": "-5"}, "handler_deadline"),
    ({"NETPLUGIN_ETCD_TIMEOUT": "0"}, "etcd_timeout"),
    ({"NETPLUGIN_THREADS": "0"}, "threads"),
])
def test_settings_that_cannot_work_are_refused(no_default_file, env, setting):
    """Config.validate promises to name 'the first setting that cannot work':
    a log level logging does not know (main() then dies with a ValueError
    traceback in logging.basicConfig), a deadline or timeout of zero or less
    (every call fails), or no worker threads."""
    with pytest.raises(InvalidRequest) as exc:
        load(env=env)
    assert setting in exc.value.message


@pytest.mark.parametrize("setting,value", [("host_id", "db-host-17\n"), ("bridge", "br0\n"),
                                           ("uplink", "bond0\n")])
def test_trailing_newline_is_refused(no_default_file, setting, value):
    """A host id read from a file often ends in a newline; the checks use
    re.match with '$', which accepts it, and it then ends up in etcd keys and
    OVS names."""
    with pytest.raises(InvalidRequest) as exc:
        load(env={}, overrides={setting: value})
    assert setting in exc.value.message


def test_daemon_main_reports_bad_settings(no_default_file, monkeypatch, capsys):
    from netplugin.daemon import main
    monkeypatch.setenv("NETPLUGIN_DATAPATH_TYPE", "dpdk")
    assert main([]) == 2
    assert "datapath_type 'dpdk'" in capsys.readouterr().err


def test_validate_returns_self():
    cfg = Config(host_id="h1")
    assert cfg.validate() is cfg
