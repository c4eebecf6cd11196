"""Bad input, fuzzed with hypothesis against a real daemon on its socket.

One daemon (driver name npfa2, its own etcd prefix and bridge) holds a small
real state: a global network made with netctl, the Docker network bound to it
and one endpoint with its veth pair and OVS port. Then every protocol method
(Plugin.Activate, NetworkDriver.*, IpamDriver.*, NetPlugin.ReleaseEndpoint) is
sent requests that must be refused:

* a valid request with exactly one field made bad: the wrong JSON type, or a
  string carrying shell metacharacters, control characters or non-ASCII text
  in a name, id, address or driver option (so the request stays invalid
  whatever the rest of it is: the other fields are those of a valid request
  on the real network and endpoint);
* bodies that are not JSON, or JSON that is not an object;
* other HTTP verbs, and unknown method paths;
* bodies over 1 MiB, with a Content-Length and chunked.

Every reply must be JSON with a 4xx status (413 for the big bodies) and a
non-empty ``Err`` and ``Error``; no request may change the state: the etcd keys
under the daemon's prefix (and their revisions), the ports of its bridge, and
no veth for any endpoint id that was sent; the daemon must keep serving (and
still describe the real endpoint correctly at the end). A request that is
accepted by mistake is undone before the test fails on it.
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import secrets
import socket
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from netplugin.dataplane.links import veth_names
from netplugin.kv import Delete, EtcdKV

from .conftest import ETCD, FaultDaemon, links

SUBNET = "10.250.201.0/24"
GATEWAY = "10.250.201.1"
VLAN = 3501
NET_NAME = "fz"
GENERIC = "com.docker.network.generic"
MIB = 1 << 20

NET_ID = secrets.token_hex(32)        # the Docker network bound to the global network
EP_ID = secrets.token_hex(32)         # the one real endpoint
NEW_NET = secrets.token_hex(32)       # ids of valid-looking requests that must still be refused
NEW_EP = secrets.token_hex(32)

EXAMPLES = int(os.environ.get("NETPLUGIN_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# -- strategies -------------------------------------------------------------------------

# One of these is in every hostile string: none of them can appear in a valid name
# (letters, digits, '.', '_', '-'), Docker id, IPv4 address, subnet or VLAN.
METAS = [";", "|", "&", "$", "`", "'", '"', "<", ">", "(", ")", "*", "?", "[", "]", "{", "}", "!", "#", "~",
         "\\", " ", "\n", "\t", "\r", "%", "^", "=", ",", "+", "\x00", "\x7f", "$(id)", "`id`", "; rm -rf /",
         "&& reboot", "| nc 10.0.0.1 9", "../", "\u202e", "\ufeff", "\u200b", "é", "名", "\U0001f4a3",
         "\ud800", "\u0661", "\uff10", "ß"]
hostile = st.builds(lambda a, m, b: a + m + b,
                    st.text(alphabet=st.characters(codec="ascii", categories=("L", "N")), max_size=12),
                    st.one_of(st.sampled_from(METAS),
                              st.characters(min_codepoint=0x80, exclude_categories=("Nd", "Cs"))),
                    st.text(max_size=12))

# VLANs that int() reads as this network's VLAN, and that must still be refused.
SNEAKY_VLANS = ["\u0663\u0665\u0660\u0661", "\uff13\uff15\uff10\uff11", " 3501", "3501 ", "3_501", "+3501",
                "3501\n", "\u09e9\u09eb\u09e6\u09e7"]
scalars = st.one_of(st.integers(), st.floats(allow_nan=True), st.booleans(), st.text(max_size=8))


def wrong_type(kind: type, truthy: bool = False, none: bool = False) -> st.SearchStrategy:
    """Any JSON value that is not of kind (null only when asked)."""
    options = []
    if kind is not str:
        options.append(hostile)
        options.append(st.text(min_size=1, max_size=8))
    if kind is not int:
        options.append(st.integers())
    options.append(st.floats(allow_nan=False, allow_infinity=False))
    if kind is not bool:
        options.append(st.booleans())
    if kind is not list:
        options.append(st.lists(scalars, min_size=0 if not truthy else 1, max_size=3))
    if kind is not dict:
        options.append(st.dictionaries(st.text(max_size=6), scalars, min_size=0 if not truthy else 1, max_size=3))
    if none:
        options.append(st.none())
    s = st.one_of(options)
    return s.filter(bool) if truthy else s


def valid(method: str, pool_id: str, address: str) -> dict:
    """A valid request of each method, on the real network and endpoint (or fresh ids)."""
    ids = {"NetworkID": NET_ID, "EndpointID": EP_ID}
    return {
        "Plugin.Activate": {},
        "NetworkDriver.GetCapabilities": {},
        "NetworkDriver.CreateNetwork": {
            "NetworkID": NEW_NET, "Options": {GENERIC: {"vlan": str(VLAN), "name": NET_NAME}},
            "IPv4Data": [{"AddressSpace": "netplugin", "Pool": SUBNET, "Gateway": f"{GATEWAY}/24",
                          "AuxAddresses": {}}], "IPv6Data": []},
        "NetworkDriver.DeleteNetwork": {"NetworkID": NET_ID},
        "NetworkDriver.CreateEndpoint": {
            "NetworkID": NET_ID, "EndpointID": NEW_EP, "Options": {},
            "Interface": {"Address": "10.250.201.200/24", "AddressIPv6": "", "MacAddress": ""}},
        "NetworkDriver.EndpointOperInfo": dict(ids),
        "NetworkDriver.DeleteEndpoint": dict(ids),
        "NetworkDriver.Join": {**ids, "SandboxKey": "", "Options": {}},
        "NetworkDriver.Leave": dict(ids),
        "NetworkDriver.ProgramExternalConnectivity": {**ids, "Options": {}},
        "NetworkDriver.RevokeExternalConnectivity": dict(ids),
        "NetworkDriver.DiscoverNew": {"DiscoveryType": 1, "DiscoveryData": {}},
        "NetworkDriver.DiscoverDelete": {"DiscoveryType": 1, "DiscoveryData": {}},
        "NetworkDriver.AllocateNetwork": {"NetworkID": NEW_NET, "Options": {}, "IPv4Data": []},
        "NetworkDriver.FreeNetwork": {"NetworkID": NEW_NET},
        "IpamDriver.GetCapabilities": {},
        "IpamDriver.GetDefaultAddressSpaces": {},
        "IpamDriver.RequestPool": {"AddressSpace": "netplugin", "Pool": SUBNET, "SubPool": "", "Options": {},
                                   "V6": False},
        "IpamDriver.ReleasePool": {"PoolID": pool_id},
        "IpamDriver.RequestAddress": {"PoolID": pool_id, "Address": "", "Options": {}},
        "IpamDriver.ReleaseAddress": {"PoolID": pool_id, "Address": address},
        "NetPlugin.ReleaseEndpoint": {"EndpointID": EP_ID},
    }[method]


METHODS = ["Plugin.Activate", "NetworkDriver.GetCapabilities", "NetworkDriver.CreateNetwork",
           "NetworkDriver.DeleteNetwork", "NetworkDriver.CreateEndpoint", "NetworkDriver.EndpointOperInfo",
           "NetworkDriver.DeleteEndpoint", "NetworkDriver.Join", "NetworkDriver.Leave",
           "NetworkDriver.ProgramExternalConnectivity", "NetworkDriver.RevokeExternalConnectivity",
           "NetworkDriver.DiscoverNew", "NetworkDriver.DiscoverDelete", "NetworkDriver.AllocateNetwork",
           "NetworkDriver.FreeNetwork", "IpamDriver.GetCapabilities", "IpamDriver.GetDefaultAddressSpaces",
           "IpamDriver.RequestPool", "IpamDriver.ReleasePool", "IpamDriver.RequestAddress",
           "IpamDriver.ReleaseAddress", "NetPlugin.ReleaseEndpoint"]

def mutations(method: str) -> dict[tuple, st.SearchStrategy]:
    """Field path -> values that make the valid request invalid."""
    def ident(required: bool = True):
        return st.one_of(hostile, wrong_type(str, none=required))
    ids = {("NetworkID",): ident(), ("EndpointID",): ident()}
    opts = wrong_type(dict, truthy=True)          # Options: any non-object (null means "none": valid)
    m: dict[str, dict[tuple, st.SearchStrategy]] = {
        "NetworkDriver.CreateNetwork": {
            ("NetworkID",): ident(),
            ("Options",): opts,
            ("Options", GENERIC): wrong_type(dict, truthy=True),
            ("Options", GENERIC, "vlan"): st.one_of(hostile, st.sampled_from(SNEAKY_VLANS)),
            ("Options", GENERIC, "name"): hostile,
            ("Options", GENERIC, "profile"): hostile,
            ("Options", GENERIC, "*key"): st.tuples(hostile, scalars),
            ("IPv4Data",): st.one_of(wrong_type(list, truthy=True), st.just([])),
            ("IPv4Data", 0): wrong_type(dict, truthy=True),
            ("IPv4Data", 0, "AddressSpace"): st.one_of(hostile, wrong_type(str, truthy=True)),
            ("IPv4Data", 0, "Pool"): st.one_of(hostile, wrong_type(str, none=True)),
            ("IPv4Data", 0, "Gateway"): st.one_of(hostile, wrong_type(str, none=True)),
            ("IPv4Data", 0, "AuxAddresses", "*key"): st.tuples(hostile, st.just("10.250.201.9")),
            ("IPv4Data", 0, "AuxAddresses", "router"): st.one_of(hostile, wrong_type(str)),
            ("IPv6Data",): st.one_of(wrong_type(list, truthy=True),
                                     st.lists(st.dictionaries(st.text(max_size=5), scalars), min_size=1, max_size=2)),
        },
        "NetworkDriver.DeleteNetwork": {("NetworkID",): ident()},
        "NetworkDriver.CreateEndpoint": {
            **ids,
            ("Options",): opts,
            ("Interface",): wrong_type(dict, truthy=True),
            ("Interface", "Address"): st.one_of(hostile, wrong_type(str, truthy=True)),
            ("Interface", "MacAddress"): st.one_of(hostile, wrong_type(str, truthy=True)),
            ("Interface", "AddressIPv6"): st.one_of(hostile, wrong_type(str, truthy=True)),
        },
        "NetworkDriver.Join": {**ids, ("Options",): opts, ("SandboxKey",): wrong_type(str, truthy=True)},
        "NetworkDriver.ProgramExternalConnectivity": {**ids, ("Options",): opts},
        "NetworkDriver.DiscoverNew": {("DiscoveryType",): wrong_type(int, none=True)},
        "NetworkDriver.DiscoverDelete": {("DiscoveryType",): wrong_type(int, none=True)},
        "NetworkDriver.AllocateNetwork": {("NetworkID",): ident(), ("Options",): opts,
                                          ("IPv4Data",): wrong_type(list, truthy=True)},
        "NetworkDriver.FreeNetwork": {("NetworkID",): ident()},
        "IpamDriver.RequestPool": {
            ("AddressSpace",): st.one_of(hostile, wrong_type(str, truthy=True)),
            ("Pool",): st.one_of(hostile, wrong_type(str, truthy=True)),
            ("SubPool",): st.one_of(hostile, wrong_type(str, truthy=True)),
            ("Options",): st.one_of(opts, st.dictionaries(hostile, scalars, min_size=1, max_size=2)),
            ("V6",): wrong_type(bool, truthy=True),
        },
        "IpamDriver.ReleasePool": {("PoolID",): st.one_of(hostile, wrong_type(str, none=True))},
        "IpamDriver.RequestAddress": {
            ("PoolID",): st.one_of(hostile, wrong_type(str, none=True)),
            ("Address",): st.one_of(hostile, wrong_type(str, truthy=True)),
            ("Options",): opts,
        },
        "IpamDriver.ReleaseAddress": {
            ("PoolID",): st.one_of(hostile, wrong_type(str, none=True)),
            ("Address",): st.one_of(hostile, wrong_type(str, none=True)),
        },
        "NetPlugin.ReleaseEndpoint": {
            ("EndpointID",): st.one_of(hostile, wrong_type(str, truthy=True)),
            ("Force",): wrong_type(bool, truthy=True),
            ("Wait",): st.one_of(hostile, st.booleans().map(lambda _: "5"), st.lists(scalars, min_size=1),
                                 st.dictionaries(st.text(max_size=3), scalars, min_size=1)),
        },
    }
    for name in ("EndpointOperInfo", "DeleteEndpoint", "Leave", "RevokeExternalConnectivity"):
        m["NetworkDriver." + name] = dict(ids)
    return m.get(method, {})


def mutate(body: dict, path: tuple, value) -> dict:
    out = copy.deepcopy(body)
    node = out
    for step in path[:-1]:
        node = node[step]
    if path[-1] == "*key":
        key, val = value
        node[key] = val
    else:
        node[path[-1]] = value
    return out


FIELD_METHODS = [m for m in METHODS if mutations(m)]

# -- the daemon and its state --------------------------------------------------------------


class State:
    """What a request must not change: etcd keys (with revisions) under the
    prefix, the bridge's ports, and veths of any endpoint id sent."""

    def __init__(self, d: FaultDaemon):
        self.d = d
        self.kv = EtcdKV([ETCD], timeout=3)
        self.sent_ids: set[str] = set()
        self.refused: dict[int, int] = {}
        self.started = time.monotonic()

    def etcd(self) -> dict[str, int]:
        out = {}
        for item in self.kv.get_prefix(self.d.prefix + "/", keys_only=True):
            rel = item.key[len(self.d.prefix):]
            # hostinfo/<host> is rewritten at every heartbeat (last_seen): its key counts, not its revision.
            out[rel] = 0 if rel.startswith(("/hostinfo/", "/hosts/")) else item.mod_revision
        return out

    def note_ids(self, body) -> None:
        if isinstance(body, dict):
            for k in ("EndpointID", "NetworkID"):
                v = body.get(k)
                if isinstance(v, str) and len(v) >= 11:
                    self.sent_ids.add(v)

    def stray_links(self) -> list[str]:
        present = set(links())
        names = {n for i in self.sent_ids - {EP_ID} for n in veth_names(i)}
        return sorted(present & names)


@pytest.fixture(scope="module")
def fz(tmp_path_factory):
    d = FaultDaemon(tmp_path_factory.mktemp("fuzz"), "npfa2")
    d.start()
    state = State(d)
    try:
        made = d.netctl("network", "create", NET_NAME, "--subnet", SUBNET, "--vlan", str(VLAN))
        assert made.returncode == 0, made.stderr
        status, pool = d.call("IpamDriver.RequestPool", valid("IpamDriver.RequestPool", "", ""))
        assert status == 200, pool
        pool_id = pool["PoolID"]
        status, reply = d.call("NetworkDriver.CreateNetwork", {
            "NetworkID": NET_ID, "Options": {GENERIC: {"name": NET_NAME}},
            "IPv4Data": [{"AddressSpace": "netplugin", "Pool": SUBNET, "Gateway": f"{GATEWAY}/24",
                          "AuxAddresses": {}}], "IPv6Data": []})
        assert status == 200, reply
        status, addr = d.call("IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "", "Options": {}})
        assert status == 200, addr
        address = addr["Address"].split("/")[0]
        status, reply = d.call("NetworkDriver.CreateEndpoint", {
            "NetworkID": NET_ID, "EndpointID": EP_ID, "Options": {},
            "Interface": {"Address": addr["Address"], "AddressIPv6": "", "MacAddress": ""}})
        assert status == 200, reply
        status, reply = d.call("NetworkDriver.Join", {"NetworkID": NET_ID, "EndpointID": EP_ID, "SandboxKey": "",
                                                      "Options": {}})
        assert status == 200, reply
        state.pool_id, state.address = pool_id, address
        state.ports = d.ovs_ports()
        assert state.ports == d.port_of(EP_ID) and len(state.ports) == 1, state.ports
        state.before = state.etcd()
        yield state
        print(f"\n{sum(state.refused.values())} bad requests in {time.monotonic() - state.started:.1f} s, "
              f"by status: {dict(sorted(state.refused.items()))}")
        # the daemon still knows the endpoint as it was
        status, info = d.call("NetworkDriver.EndpointOperInfo", {"NetworkID": NET_ID, "EndpointID": EP_ID})
        assert status == 200 and info["Value"]["ip"] == address, info
        for method, body in (("NetworkDriver.Leave", {"NetworkID": NET_ID, "EndpointID": EP_ID}),
                             ("NetworkDriver.DeleteEndpoint", {"NetworkID": NET_ID, "EndpointID": EP_ID}),
                             ("IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": address}),
                             ("NetworkDriver.DeleteNetwork", {"NetworkID": NET_ID})):
            status, reply = d.call(method, body)
            assert status == 200, (method, reply)
    except AssertionError:
        print(d.tail())
        raise
    finally:
        d.stop()
        d.netctl("network", "rm", NET_NAME, "--force")
        state.kv.txn([], [Delete(d.prefix + "/", prefix=True)])
        state.kv.close()
        d.remove_bridge()


UNDO = {
    "NetworkDriver.CreateNetwork": lambda b, r: ("NetworkDriver.DeleteNetwork", {"NetworkID": b.get("NetworkID")}),
    "NetworkDriver.CreateEndpoint": lambda b, r: ("NetworkDriver.DeleteEndpoint",
                                                  {"NetworkID": b.get("NetworkID"), "EndpointID": b.get("EndpointID")}),
    "IpamDriver.RequestAddress": lambda b, r: ("IpamDriver.ReleaseAddress",
                                               {"PoolID": b.get("PoolID"), "Address": r.get("Address", "")}),
}


def check_refused(fz: State, method: str, status: int, reply, body, want=range(400, 500)) -> None:
    """A 4xx JSON reply with Err and Error; nothing changed in etcd; the daemon alive."""
    fz.refused[status] = fz.refused.get(status, 0) + 1
    if status == 200 and method in UNDO and isinstance(body, dict):
        fz.d.call(*UNDO[method](body, reply if isinstance(reply, dict) else {}))
    assert status in want, f"{method} {body!r:.300} -> {status} {reply!r:.300}"
    assert isinstance(reply, dict), f"{method}: the reply is not a JSON object: {reply!r:.200}"
    for key in ("Err", "Error"):
        assert isinstance(reply.get(key), str) and reply[key].strip(), f"{method}: no {key} in {reply!r:.300}"
    assert fz.d.proc.poll() is None, f"the daemon died on {method} {body!r:.300}:\n{fz.d.tail()}"
    now = fz.etcd()
    assert now == fz.before, (f"{method} {body!r:.300} changed etcd: "
                              f"{sorted(set(now.items()) ^ set(fz.before.items()))}")


def check_unchanged(fz: State) -> None:
    assert fz.d.ovs_ports() == fz.ports, f"bridge ports changed: {fz.d.ovs_ports()} != {fz.ports}"
    assert not fz.stray_links(), f"veths made for refused requests: {fz.stray_links()}"
    assert fz.d.answers(), "the daemon stopped answering"


# -- raw HTTP on the unix socket -------------------------------------------------------------

def raw(path: str, data: bytes, timeout: float = 15) -> tuple[int, object, float]:
    """Send bytes as they are; (status, parsed JSON body or the raw text, seconds)."""
    t0 = time.monotonic()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass                      # the server answered and closed early: read what it said
        resp = http.client.HTTPResponse(s)
        resp.begin()
        text = resp.read()
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = text
        return resp.status, parsed, time.monotonic() - t0
    finally:
        s.close()


def request(verb: str, method_path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    head = [f"{verb} {method_path} HTTP/1.1", "Host: localhost", "Content-Type: application/json",
            "Accept: application/vnd.docker.plugins.v1.2+json", "Connection: close"]
    hdrs = {"Content-Length": str(len(body))} | (headers or {})
    head += [f"{k}: {v}" for k, v in hdrs.items() if v is not None]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def chunked(body: bytes, size: int = 65536) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n\r\n"


# -- the tests ---------------------------------------------------------------------------------

@pytest.mark.parametrize("method", FIELD_METHODS)
@FUZZ
@given(data=st.data())
def test_one_bad_field_is_refused(fz, method, data):
    """A valid request on the real network/endpoint with one field made bad is refused, changing nothing."""
    muts = mutations(method)
    path = data.draw(st.sampled_from(sorted(muts, key=repr)), label="field")
    body = mutate(valid(method, fz.pool_id, fz.address), path, data.draw(muts[path], label="value"))
    fz.note_ids(body)
    status, reply = fz.d.call(method, body)
    check_refused(fz, method, status, reply, body)


def test_one_bad_field_left_nothing(fz):
    """After all of the above: the bridge has its one port and no veth was made for a refused request."""
    check_unchanged(fz)


@example(body=b"{", method="Plugin.Activate")
@example(body=b"\xff\xfe{}", method="NetworkDriver.CreateNetwork")
@example(body=b'{"NetworkID": "a", }', method="NetworkDriver.CreateEndpoint")
@example(body=b"[]", method="IpamDriver.RequestAddress")
@example(body=b"null", method="IpamDriver.RequestPool")
@example(body=b'"{}"', method="NetPlugin.ReleaseEndpoint")
@example(body=b"{\"a\": NaN", method="NetworkDriver.Join")
@example(body=b"\x00" * 16, method="IpamDriver.GetCapabilities")
@FUZZ
@given(body=st.one_of(
    st.binary(min_size=1, max_size=200),
    st.text(min_size=1, max_size=100).map(str.encode),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                 lambda inner: st.lists(inner, max_size=3), max_leaves=6).map(lambda v: json.dumps(v).encode()),
).filter(lambda b: b.strip() != b"" and not _is_object(b)), method=st.sampled_from(METHODS))
def test_not_a_json_object_is_refused(fz, body, method):
    status, reply, _ = raw(fz.d.socket, request("POST", "/" + method, body))
    check_refused(fz, method, status, reply, body)
    assert "JSON" in reply["Err"], reply


def _is_object(b: bytes) -> bool:
    try:
        return isinstance(json.loads(b), dict)
    except ValueError:
        return False


@FUZZ
@given(verb=st.sampled_from(["GET", "PUT", "DELETE", "PATCH"]), method=st.sampled_from(METHODS))
def test_other_verbs_are_refused(fz, verb, method):
    status, reply, _ = raw(fz.d.socket, request(verb, "/" + method, b"{}"))
    check_refused(fz, method, status, reply, verb)


@FUZZ
@given(name=hostile)
def test_unknown_methods_get_404(fz, name):
    from urllib.parse import quote
    path = "/NetworkDriver." + quote(name.encode("utf-8", "surrogatepass"), safe="")
    status, reply, _ = raw(fz.d.socket, request("POST", path, b"{}"))
    check_refused(fz, path, status, reply, name, want=(404,))


@pytest.mark.parametrize("method", METHODS)
def test_bodies_over_1mib_are_refused(fz, method):
    """Over 1 MiB is 413 with Err, whether sent with a length, chunked, or only announced."""
    big = json.dumps({"NetworkID": "a" * MIB}).encode()
    assert len(big) > MIB
    status, reply, sec = raw(fz.d.socket, request("POST", "/" + method, big))
    check_refused(fz, method, status, reply, "1 MiB + 15 bytes", want=(413,))
    assert "1 MiB" in reply["Err"], reply
    status, reply, sec = raw(fz.d.socket, request("POST", "/" + method, chunked(big),
                                                  {"Content-Length": None, "Transfer-Encoding": "chunked"}))
    check_refused(fz, method, status, reply, "chunked 1 MiB + 15 bytes", want=(413,))
    # Only the header: refused at once, without waiting for 1 GiB that never comes.
    status, reply, sec = raw(fz.d.socket, request("POST", "/" + method, b"{}", {"Content-Length": str(1 << 30)}),
                             timeout=10)
    check_refused(fz, method, status, reply, "Content-Length 1 GiB", want=(413,))
    assert sec < 2, f"{method}: an announced 1 GiB body took {sec:.1f} s to refuse"


def test_one_mib_exactly_is_read(fz):
    """The limit is 1 MiB, not less: a 1 MiB request (padded with spaces) is answered normally."""
    body = b"{}" + b" " * (MIB - 2)
    status, reply, _ = raw(fz.d.socket, request("POST", "/Plugin.Activate", body))
    assert status == 200 and "NetworkDriver" in reply["Implements"], (status, reply)
    check_unchanged(fz)
    assert fz.etcd() == fz.before
