"""etcd TLS and authentication settings that cannot be honoured as written are
refused when the settings load (netplugin/etcd_access.py, by Config.validate,
which netplugin, netctl and drctl all load) and again by EtcdKV itself: never
a TLS file or a password silently ignored, never a password in clear."""

from __future__ import annotations

import argparse
import os

import pytest

from netplugin import config as config_mod
from netplugin.backup import cli as drctl_cli
from netplugin.config import load
from netplugin.errors import InvalidRequest, StoreUnavailable
from netplugin.etcd_access import check, is_loopback
from netplugin.kv import EtcdKV

HTTPS = "https://10.0.0.1:2379,https://10.0.0.2:2379"
TLS = {"NETPLUGIN_ETCD_CACERT": "/pki/ca.pem", "NETPLUGIN_ETCD_CERT": "/pki/c.pem", "NETPLUGIN_ETCD_KEY": "/pki/k.pem"}
AUTH = {"NETPLUGIN_ETCD_USER": "np", "NETPLUGIN_ETCD_PASSWORD": "pw"}


@pytest.fixture(autouse=True)
def no_default_file(monkeypatch, tmp_path):
    monkeypatch.setattr(config_mod, "DEFAULT_CONFIG_FILE", str(tmp_path / "absent.toml"))
    for name in [n for n in os.environ if n.startswith("NETPLUGIN_")]:
        monkeypatch.delenv(name)


def drctl_load(env: dict[str, str]):
    """drctl's etcd settings, as its commands load them (netplugin's loader)."""
    for name, value in env.items():
        os.environ[name] = value
    try:
        return drctl_cli.Context(argparse.Namespace()).np_cfg
    finally:
        for name in env:
            del os.environ[name]


LOADERS = [pytest.param(lambda env: load(env=env), id="netplugin"), pytest.param(drctl_load, id="drctl")]

REFUSED = [
    pytest.param({"NETPLUGIN_ETCD_CACERT": "/pki/ca.pem"}, ["etcd_cacert", "http://", "https://"],
                 id="CA with http endpoints"),
    pytest.param({**TLS}, ["etcd_cacert, etcd_cert, etcd_key", "ignored"], id="CA, cert and key with http"),
    pytest.param({"NETPLUGIN_ETCD_ENDPOINTS": "http://10.0.0.1:2379,https://10.0.0.2:2379"}, ["mixes"],
                 id="mixed schemes"),
    pytest.param({"NETPLUGIN_ETCD_ENDPOINTS": HTTPS, "NETPLUGIN_ETCD_CACERT": "/ca", "NETPLUGIN_ETCD_CERT": "/c"},
                 ["etcd_cert and etcd_key go together", "etcd_key is missing"], id="cert without key"),
    pytest.param({"NETPLUGIN_ETCD_ENDPOINTS": HTTPS, "NETPLUGIN_ETCD_CACERT": "/ca", "NETPLUGIN_ETCD_KEY": "/k"},
                 ["etcd_cert and etcd_key go together", "etcd_cert is missing"], id="key without cert"),
    pytest.param({"NETPLUGIN_ETCD_ENDPOINTS": HTTPS, "NETPLUGIN_ETCD_CERT": "/c", "NETPLUGIN_ETCD_KEY": "/k"},
                 ["without etcd_cacert", "system's CA store", "set etcd_cacert"], id="cert and key without CA"),
    pytest.param({"NETPLUGIN_ETCD_ENDPOINTS": HTTPS, "NETPLUGIN_ETCD_USER": "np"},
                 ["etcd_user and etcd_password go together", "etcd_password is missing"], id="user alone"),
    pytest.param({"NETPLUGIN_ETCD_ENDPOINTS": HTTPS, "NETPLUGIN_ETCD_PASSWORD": "pw"},
                 ["etcd_user and etcd_password go together", "etcd_user is missing"], id="password alone"),
    pytest.param({**AUTH}, ["sent in clear", "https://", "etcd_allow_plaintext_password"],
                 id="password over http"),
    pytest.param({**AUTH, "NETPLUGIN_ETCD_ENDPOINTS": "http://10.0.0.1:2379",
                  "NETPLUGIN_ETCD_ALLOW_PLAINTEXT_PASSWORD": "true"},
                 ["loopback endpoints only", "http://10.0.0.1:2379 is not on loopback"],
                 id="plaintext password allowed, but the endpoint is remote"),
    pytest.param({**AUTH, "NETPLUGIN_ETCD_ENDPOINTS": "http://127.0.0.1:2379,http://10.0.0.2:2379",
                  "NETPLUGIN_ETCD_ALLOW_PLAINTEXT_PASSWORD": "1"},
                 ["http://10.0.0.2:2379 is not on loopback"], id="plaintext password allowed, one remote"),
]


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("env,words", REFUSED)
def test_misconfigurations_are_refused_with_what_to_do(loader, env, words):
    with pytest.raises(InvalidRequest) as exc:
        loader(env)
    for word in words:
        assert word in exc.value.message, exc.value.message


ACCEPTED = [
    pytest.param({}, id="plain http, no credentials"),
    pytest.param({"NETPLUGIN_ETCD_ENDPOINTS": HTTPS}, id="https with the system's CAs"),
    pytest.param({"NETPLUGIN_ETCD_ENDPOINTS": HTTPS, "NETPLUGIN_ETCD_CACERT": "/ca"}, id="https with a CA"),
    pytest.param({**TLS, **AUTH, "NETPLUGIN_ETCD_ENDPOINTS": HTTPS}, id="CA, client pair and password"),
    pytest.param({**AUTH, "NETPLUGIN_ETCD_ENDPOINTS": HTTPS}, id="password over https"),
    pytest.param({**AUTH, "NETPLUGIN_ETCD_ENDPOINTS": "http://127.0.0.1:2379,http://localhost:3379,http://[::1]:4379",
                  "NETPLUGIN_ETCD_ALLOW_PLAINTEXT_PASSWORD": "true"}, id="plaintext password on loopback, allowed"),
]


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("env", ACCEPTED)
def test_consistent_settings_load(loader, env):
    cfg = loader(env)
    assert cfg.etcd_password == env.get("NETPLUGIN_ETCD_PASSWORD")
    assert cfg.etcd_cacert == env.get("NETPLUGIN_ETCD_CACERT")


def test_the_toml_file_spelling_of_the_allowance(tmp_path):
    path = tmp_path / "np.toml"
    path.write_text('etcd_user = "np"\netcd_password = "pw"\n')
    with pytest.raises(InvalidRequest, match="sent in clear"):
        load(str(path), env={})
    path.write_text('etcd_user = "np"\netcd_password = "pw"\netcd_allow_plaintext_password = true\n')
    assert load(str(path), env={}).etcd_allow_plaintext_password is True


@pytest.mark.parametrize("url,local", [("http://127.0.0.1:2379", True), ("http://127.9.9.9:1", True),
                                       ("http://[::1]:2379", True), ("http://localhost:2379", True),
                                       ("http://10.0.0.1:2379", False), ("http://localhost.evil:2379", False),
                                       ("http://[::2]:2379", False)])
def test_loopback(url, local):
    assert is_loopback(url) is local


def test_the_client_refuses_what_the_settings_refuse():
    """EtcdKV checks again, for callers that build it without Config."""
    with pytest.raises(InvalidRequest, match="ignored"):
        EtcdKV(["http://127.0.0.1:2379"], cacert="/ca.pem")
    with pytest.raises(InvalidRequest, match="sent in clear"):
        EtcdKV(["http://127.0.0.1:2379"], user="u", password="p")
    with pytest.raises(InvalidRequest, match="without etcd_cacert"):
        EtcdKV(["https://127.0.0.1:2379"], cert="/c.pem", key="/k.pem")
    EtcdKV(["http://127.0.0.1:2379"], user="u", password="p", allow_plaintext_password=True)
    check(["https://127.0.0.1:2379"], cacert="/ca", cert="/c", key="/k", user="u", password="p")


def test_an_unreadable_tls_file_is_named(tmp_path):
    """Connecting with a CA file that is not there says which file, not 'etcd did not answer'."""
    kv = EtcdKV(["https://127.0.0.1:1"], cacert=str(tmp_path / "nope.pem"), timeout=0.5)
    with pytest.raises(StoreUnavailable) as exc:
        kv.get("/x")
    assert f"cannot read etcd_cacert {tmp_path / 'nope.pem'}" in exc.value.message
    assert "No such file" in exc.value.message


def test_http_endpoints_get_no_tls_and_https_ones_no_fallback(tmp_path):
    """No channel is ever made insecure for an https:// endpoint, and no
    credentials are built for http:// ones."""
    import grpc
    plain = EtcdKV(["http://127.0.0.1:1"])
    assert plain._credentials(grpc) is None
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    secure = EtcdKV(["https://127.0.0.1:1"], cacert=str(ca))
    assert isinstance(secure._credentials(grpc), grpc.ChannelCredentials)
    client = secure._connect()
    try:
        assert all(ep.secure and ep.credentials is not None for ep in client.endpoints.values())
    finally:
        client.close()
