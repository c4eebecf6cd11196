"""The daemon's command line (netplugin/daemon.py, settings): the etcd TLS and
user/password flags map onto the same settings as the config file and the
NETPLUGIN_ETCD_* variables, flags winning; the password only ever comes from a
file, never from the command line itself."""

from __future__ import annotations

import os

import pytest

from netplugin import config as config_mod
from netplugin.daemon import main, parse_args, settings


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.setattr(config_mod, "DEFAULT_CONFIG_FILE", str(tmp_path / "absent.toml"))
    for name in [n for n in os.environ if n.startswith("NETPLUGIN_")]:
        monkeypatch.delenv(name)
    return tmp_path


def secret(tmp_path, text: str, name: str = "etcd.pw"):
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def test_tls_and_user_flags_map_to_the_etcd_settings(clean_env):
    pw = secret(clean_env, "s3cret pass\n")
    cfg = settings(["--etcd-endpoints", "https://10.0.0.1:2379,https://10.0.0.2:2379",
                    "--cacert", "/etc/netplugin/ca.pem", "--cert", "/etc/netplugin/np.pem",
                    "--key", "/etc/netplugin/np-key.pem", "--user", "netplugin", "--password-file", pw])
    assert cfg.etcd_endpoints == ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
    assert (cfg.etcd_cacert, cfg.etcd_cert, cfg.etcd_key) == (
        "/etc/netplugin/ca.pem", "/etc/netplugin/np.pem", "/etc/netplugin/np-key.pem")
    assert (cfg.etcd_user, cfg.etcd_password) == ("netplugin", "s3cret pass")     # first line, no newline


def test_flags_win_over_file_and_environment(clean_env, monkeypatch):
    toml = clean_env / "np.toml"
    toml.write_text('etcd_endpoints = ["https://10.0.0.1:2379"]\netcd_cacert = "/file/ca.pem"\netcd_user = "file-user"\netcd_password = "file-pw"\n'
                    'etcd_cert = "/file/c.pem"\netcd_key = "/file/k.pem"\n')
    monkeypatch.setenv("NETPLUGIN_ETCD_USER", "env-user")
    monkeypatch.setenv("NETPLUGIN_ETCD_CERT", "/env/c.pem")
    cfg = settings(["--config", str(toml)])
    assert (cfg.etcd_cacert, cfg.etcd_cert, cfg.etcd_key) == ("/file/ca.pem", "/env/c.pem", "/file/k.pem")
    assert (cfg.etcd_user, cfg.etcd_password) == ("env-user", "file-pw")
    cfg = settings(["--config", str(toml), "--cacert", "/flag/ca.pem", "--key", "/flag/k.pem",
                    "--user", "flag-user", "--password-file", secret(clean_env, "flag-pw")])
    assert (cfg.etcd_cacert, cfg.etcd_cert, cfg.etcd_key) == ("/flag/ca.pem", "/env/c.pem", "/flag/k.pem")
    assert (cfg.etcd_user, cfg.etcd_password) == ("flag-user", "flag-pw")


def test_no_flag_leaves_the_settings_alone(clean_env, monkeypatch):
    monkeypatch.setenv("NETPLUGIN_ETCD_ENDPOINTS", "https://10.0.0.1:2379")     # no password over http
    monkeypatch.setenv("NETPLUGIN_ETCD_PASSWORD", "env-pw")
    monkeypatch.setenv("NETPLUGIN_ETCD_USER", "u")
    cfg = settings([])
    assert (cfg.etcd_user, cfg.etcd_password, cfg.etcd_cacert, cfg.etcd_cert, cfg.etcd_key) == \
        ("u", "env-pw", None, None, None)


def test_there_is_no_password_flag(clean_env, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--password", "visible-in-ps"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --password visible-in-ps" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    help_text = capsys.readouterr().out
    for flag in ("--cacert", "--cert", "--key", "--user", "--password-file"):
        assert flag in help_text


@pytest.mark.parametrize("content, message", [
    (None, "cannot read password file"),
    ("", "is empty"),
    ("\nsecond-line", "is empty"),
])
def test_bad_password_file_is_a_usage_error(clean_env, capsys, content, message):
    path = str(clean_env / "missing.pw") if content is None else secret(clean_env, content)
    with pytest.raises(SystemExit) as exc:
        settings(["--password-file", path])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --password-file" in err and message in err and path in err


def test_user_without_password_is_refused_by_main(clean_env, capsys):
    assert main(["--user", "netplugin"]) == 2
    assert "etcd_user and etcd_password go together" in capsys.readouterr().err


def test_cert_without_key_is_refused_by_main(clean_env, capsys):
    assert main(["--cert", "/etc/netplugin/np.pem"]) == 2
    assert "etcd_cert and etcd_key go together" in capsys.readouterr().err
