"""The records kept in etcd, as dataclasses that turn into JSON and back.

Network (``/netplugin/v1/networks/<id>``)::

    {"id": "n-3f2a9c1d0b7e", "name": "prod", "subnet": "10.10.0.0/24",
     "gateway": "10.10.0.1", "vlan": 100, "ranges": ["10.10.0.128/25"],
     "aux": {"router": "10.10.0.2"}, "origin": "netctl", "created": 1764125000.0}

Endpoint (``/netplugin/v1/endpoints/<endpoint-id>``)::

    {"id": "<64 hex>", "network": "n-3f2a9c1d0b7e", "docker_network": "<64 hex>",
     "host": "db-host-17", "ip": "10.10.0.7", "prefixlen": 24,
     "mac": "02:4e:0a:0a:00:07", "port": "np3f2a9c1d0b7", "peer": "nc3f2a9c1d0b7",
     "vlan": 100, "sandbox": "", "created": 1764125000.0}

Allocation (``/netplugin/v1/ipam/<subnet>/<offset>``)::

    {"ip": "10.10.0.7", "kind": "endpoint", "host": "db-host-17",
     "endpoint": "<64 hex or empty until CreateEndpoint>", "network": "n-...",
     "created": 1764125000.0}
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field, fields

import netaddr

from . import jsondepth
from .errors import InvalidRequest

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
DOCKER_ID_RE = re.compile(r"^[0-9a-f]{64}$")
NETWORK_ID_RE = re.compile(r"^n-[0-9a-f]{12}$")
VLAN_RE = re.compile(r"-?[0-9]{1,9}")
SANDBOX_RE = re.compile(r"(/[A-Za-z0-9_.-]+)+")
HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}")
IFNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
STRICT_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
ALLOC_KINDS = ("endpoint", "gateway", "aux")
ORIGINS = ("netctl", "docker")
MIN_PREFIXLEN = 16   # at most 65,536 addresses: one layer-2 domain, never more
MAX_PREFIXLEN = 30

ALLOC_ENDPOINT = "endpoint"
ALLOC_GATEWAY = "gateway"
ALLOC_AUX = "aux"


# What a check of a record may raise on garbage (netaddr's AddrFormatError is no ValueError).
CHECK_ERRORS = (InvalidRequest, ValueError, TypeError, AttributeError, KeyError, netaddr.AddrFormatError)


class BadRecord(ValueError):
    """A record read from etcd that does not hold what its kind must (written by
    hand, by an older version, or by someone who means harm)."""


class Record:
    """JSON round trip shared by every record; unknown keys are ignored so a
    newer daemon's records still load in an older netctl."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True,  # type: ignore[call-overload]  # mixed into dataclasses only
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str):
        data = json.loads(raw)
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]  # mixed into dataclasses only
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def load(cls, raw: bytes | str):
        """A record read from etcd, checked whole: BadRecord says what is wrong."""
        try:
            data = jsondepth.loads(raw)
        except ValueError as exc:
            raise BadRecord(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise BadRecord(f"a JSON {type(data).__name__}, not an object")
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]  # mixed into dataclasses only
        try:
            rec = cls(**{k: v for k, v in data.items() if k in names})
            rec.check()
        except BadRecord:
            raise
        except TypeError as exc:
            raise BadRecord(f"missing or unknown field: {exc}") from None
        except CHECK_ERRORS as exc:
            raise BadRecord(getattr(exc, "message", None) or str(exc)) from None
        return rec

    def check(self) -> None:
        """Raise BadRecord (or InvalidRequest) when a field is not what it must be."""


@dataclass
class Network(Record):
    id: str
    name: str | None
    subnet: str
    gateway: str
    vlan: int
    ranges: list[str] = field(default_factory=list)
    aux: dict[str, str] = field(default_factory=dict)
    origin: str = "netctl"
    name_conflict: str = ""
    profile: str = ""
    created: float = field(default_factory=time.time)

    @property
    def label(self) -> str:
        """The name to show people; a Docker-made network is briefly unnamed."""
        return self.name or self.id

    def check(self) -> None:
        _want(isinstance(self.id, str) and NETWORK_ID_RE.fullmatch(self.id), f"id {self.id!r} is not n-<12 hex>")
        if self.name is not None:
            check_name(self.name)
        subnet = check_subnet(self.subnet)
        check_address(self.gateway, subnet, "gateway")
        _want(isinstance(self.vlan, int), f"vlan {self.vlan!r} is not a number")
        check_vlan(self.vlan)
        _want(isinstance(self.ranges, list), "ranges is not a list")
        for rng in self.ranges:
            check_range(rng, subnet)
        _want(isinstance(self.aux, dict), "aux is not an object")
        for key, ip in self.aux.items():
            check_name(key, "aux address name")
            check_address(ip, subnet, f"aux address {key}")
        _want(self.origin in ORIGINS, f"origin {self.origin!r} is neither netctl nor docker")
        _want(isinstance(self.name_conflict, str), "name_conflict is not a string")
        if self.profile:
            check_name(self.profile, "profile name")
        _check_time(self.created)


@dataclass
class Endpoint(Record):
    id: str
    network: str
    docker_network: str
    host: str
    ip: str
    prefixlen: int
    mac: str
    port: str
    peer: str
    vlan: int
    network_name: str = ""
    sandbox: str = ""
    limit: dict = field(default_factory=dict)   # {"profile": P} or {"rate_kbps": R, "burst_kb": B}
    created: float = field(default_factory=time.time)

    def check(self) -> None:
        check_docker_id(self.id, "id")
        _want(isinstance(self.network, str) and NETWORK_ID_RE.fullmatch(self.network),
              f"network {self.network!r} is not n-<12 hex>")
        check_docker_id(self.docker_network, "docker_network")
        check_host(self.host)
        _want(isinstance(self.prefixlen, int) and not isinstance(self.prefixlen, bool)
              and MIN_PREFIXLEN <= self.prefixlen <= MAX_PREFIXLEN, f"prefixlen {self.prefixlen!r} is out of range")
        _want(isinstance(self.ip, str) and "/" not in self.ip, f"ip {self.ip!r} is not an address")
        check_address(self.ip, netaddr.IPNetwork(f"{self.ip}/{self.prefixlen}").cidr, "ip")
        check_strict_mac(self.mac)
        for what in ("port", "peer"):
            value = getattr(self, what)
            _want(isinstance(value, str) and IFNAME_RE.fullmatch(value), f"{what} {value!r} is not an interface name")
        _want(isinstance(self.vlan, int), f"vlan {self.vlan!r} is not a number")
        check_vlan(self.vlan)
        if self.network_name:
            check_name(self.network_name)
        check_sandbox_key(self.sandbox)
        check_limit(self.limit)
        _check_time(self.created)


@dataclass
class Allocation(Record):
    ip: str
    kind: str
    host: str
    endpoint: str = ""
    network: str = ""
    created: float = field(default_factory=time.time)

    def check(self) -> None:
        _want(isinstance(self.ip, str), f"ip {self.ip!r} is not an address")
        try:
            netaddr.IPAddress(self.ip, version=4, flags=netaddr.INET_PTON)
        except (netaddr.AddrFormatError, ValueError, TypeError):
            raise BadRecord(f"ip {self.ip!r} is not an IPv4 address") from None
        _want(self.kind in ALLOC_KINDS, f"kind {self.kind!r} is not one of {', '.join(ALLOC_KINDS)}")
        check_host(self.host)
        if self.endpoint:
            check_docker_id(self.endpoint, "endpoint")
        _want(self.network == "" or (isinstance(self.network, str) and NETWORK_ID_RE.fullmatch(self.network)),
              f"network {self.network!r} is not n-<12 hex>")
        _check_time(self.created)


@dataclass
class Binding(Record):
    """Which global network one host's Docker network stands for."""

    docker_network: str
    network: str
    host: str
    pool: str = ""
    created: float = field(default_factory=time.time)

    def check(self) -> None:
        check_docker_id(self.docker_network, "docker_network")
        _want(isinstance(self.network, str) and NETWORK_ID_RE.fullmatch(self.network),
              f"network {self.network!r} is not n-<12 hex>")
        check_host(self.host)
        if self.pool:
            check_subnet(self.pool)
        _check_time(self.created)


@dataclass
class Profile(Record):
    """A bandwidth profile: what a container may send, in kbit/s, with a burst in kbit."""

    name: str
    rate_kbps: int
    burst_kb: int
    created: float = field(default_factory=time.time)

    def check(self) -> None:
        check_name(self.name, "profile name")
        for what in ("rate_kbps", "burst_kb"):
            value = getattr(self, what)
            _want(isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 100_000_000,
                  f"{what} {value!r} is not a positive number of kbit")
        _check_time(self.created)


@dataclass
class Host(Record):
    """A daemon's host: in ``hosts/`` under its lease while alive, in ``hostinfo/`` for good."""

    host: str
    bridge: str = ""
    datapath_type: str = ""
    uplink: str | None = None
    version: str = ""
    started: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.time)

    def check(self) -> None:
        check_host(self.host)
        _want(self.bridge == "" or (isinstance(self.bridge, str) and IFNAME_RE.fullmatch(self.bridge)),
              f"bridge {self.bridge!r} is not a bridge name")
        _want(isinstance(self.datapath_type, str) and isinstance(self.version, str), "a text field is not text")
        _want(self.uplink is None or (isinstance(self.uplink, str) and IFNAME_RE.fullmatch(self.uplink)),
              f"uplink {self.uplink!r} is not an interface name")
        _check_time(self.started)
        _check_time(self.last_seen)


# -- validation helpers shared by the API, netctl and the driver -------------

def _want(ok: object, message: str) -> None:
    if not ok:
        raise BadRecord(message)


def _check_time(value: object) -> None:
    _want(isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0,
          f"time {value!r} is not a number of seconds")


def check_host(value: object) -> str:
    """A host id: a hostname-like word (letters, digits, '.', '_', '-')."""
    if not isinstance(value, str) or not HOST_RE.fullmatch(value):
        raise InvalidRequest(f"host {value!r} is not a host id (letters, digits, '.', '_', '-')")
    return value


def check_strict_mac(value: object) -> str:
    """A unicast MAC exactly as netplugin writes it: six lowercase hex pairs joined by ':'."""
    if not isinstance(value, str) or not STRICT_MAC_RE.fullmatch(value) or int(value[:2], 16) & 1:
        raise InvalidRequest(f"MAC address {value!r} is not a unicast aa:bb:cc:dd:ee:ff")
    return value


def check_limit(value: object) -> dict:
    """An endpoint's limit: {}, {"profile": NAME} or {"rate_kbps": R, "burst_kb": B}."""
    if not isinstance(value, dict):
        raise InvalidRequest(f"limit {value!r} is not an object")
    if not value or (set(value) == {"profile"} and check_name(value["profile"], "profile name")):
        return value
    if set(value) == {"rate_kbps", "burst_kb"} and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value.values()):
        return value
    raise InvalidRequest(f"limit {value!r} is neither a profile nor a positive rate_kbps and burst_kb")


def check_name(name: object, what: str = "network name") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidRequest(
            f"{what} {name!r} is invalid: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def check_docker_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not DOCKER_ID_RE.fullmatch(value):
        raise InvalidRequest(f"{what} {value!r} is not a Docker id (64 lowercase hex digits)")
    return value


def check_sandbox_key(value: object) -> str:
    """Join's SandboxKey: empty, or a plain absolute path of a network namespace
    (/var/run/docker/netns/<id>). It is stored with the endpoint and handed to
    the kernel (setns) when the reconciler repairs a live container."""
    if value == "":
        return value
    if (not isinstance(value, str) or len(value) > 4096 or not SANDBOX_RE.fullmatch(value)
            or any(part in (".", "..") for part in value.split("/"))):
        raise InvalidRequest(f"SandboxKey {value!r} is not a network namespace path such as "
                             "/var/run/docker/netns/0123456789ab (absolute; letters, digits, '.', '_', '-')")
    return value


def check_vlan(value: object) -> int:
    # ASCII digits only: int() alone would also take " 100", "1_00", "+100" and
    # other scripts' digits ("\u0661\u0660\u0660"), none of which an operator means.
    if isinstance(value, bool) or not (isinstance(value, int) or
                                       (isinstance(value, str) and VLAN_RE.fullmatch(value))):
        raise InvalidRequest(f"vlan {value!r} is not a number: give a VLAN id from 1 to 4094")
    vlan = int(value)
    if not 1 <= vlan <= 4094:
        raise InvalidRequest(f"vlan {vlan} is out of range: give a VLAN id from 1 to 4094")
    return vlan


def check_subnet(value: object) -> netaddr.IPNetwork:
    """An IPv4 subnet in canonical form, /16 to /30."""
    if not isinstance(value, str) or "/" not in value:
        raise InvalidRequest(f"subnet {value!r} must be an IPv4 CIDR such as 10.10.0.0/24")
    try:
        net = netaddr.IPNetwork(value, flags=netaddr.NOHOST)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise InvalidRequest(f"subnet {value!r} is not a valid IPv4 CIDR such as 10.10.0.0/24") from None
    if net.version != 4:
        raise InvalidRequest(f"subnet {value} is IPv6: netplugin serves IPv4 pools only")
    if str(net.cidr) != value.strip():
        raise InvalidRequest(f"subnet {value} has host bits set: did you mean {net.cidr}?")
    if not MIN_PREFIXLEN <= net.prefixlen <= MAX_PREFIXLEN:
        raise InvalidRequest(
            f"subnet {value} is /{net.prefixlen}: netplugin pools are /{MIN_PREFIXLEN} to /{MAX_PREFIXLEN}")
    return net.cidr


def check_address(value: object, subnet: netaddr.IPNetwork, what: str = "address") -> netaddr.IPAddress:
    """A usable host address inside subnet (not the network or broadcast address)."""
    if not isinstance(value, str):      # netaddr would take an int as an address, and crash on a list
        raise InvalidRequest(f"{what} {value!r} is not a valid IPv4 address")
    text = value
    if isinstance(value, str) and "/" in value:
        text, _, plen = value.partition("/")
        if plen != str(subnet.prefixlen):
            raise InvalidRequest(f"{what} {value} has prefix length /{plen}, but the subnet is {subnet}")
    try:
        ip = netaddr.IPAddress(text, flags=netaddr.INET_PTON)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise InvalidRequest(f"{what} {value!r} is not a valid IPv4 address") from None
    if ip.version != 4 or ip not in subnet:
        raise InvalidRequest(f"{what} {ip} is outside subnet {subnet}")
    if ip in (subnet.network, subnet.broadcast):
        raise InvalidRequest(f"{what} {ip} is the network or broadcast address of {subnet}")
    return ip


def check_range(value: object, subnet: netaddr.IPNetwork) -> netaddr.IPNetwork:
    """An --ip-range: a CIDR inside the subnet."""
    try:
        rng = netaddr.IPNetwork(value, flags=netaddr.NOHOST)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise InvalidRequest(f"ip range {value!r} is not a CIDR such as 10.10.0.128/25") from None
    if rng.version != 4 or rng.cidr not in subnet or str(rng.cidr) != str(value).strip():
        raise InvalidRequest(f"ip range {value} must be a CIDR without host bits inside subnet {subnet}")
    return rng.cidr


def mac_for(ip: str) -> str:
    """A locally administered MAC derived from the IPv4 address (02:4e:a:b:c:d),
    so that an address that moves keeps its MAC and neighbours' caches stay right."""
    octets = [int(x) for x in ip.split(".")]
    return "02:4e:" + ":".join(f"{o:02x}" for o in octets)


def check_mac(value: object) -> str:
    try:
        mac = netaddr.EUI(str(value), version=48)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise InvalidRequest(f"MAC address {value!r} is invalid") from None
    if int(mac) >> 40 & 1:
        raise InvalidRequest(f"MAC address {value} is a multicast address")
    return str(mac).replace("-", ":").lower()


def check_tombstone(data: dict) -> None:
    """A released endpoint's tombstone: who released which endpoint's address, when."""
    check_docker_id(data.get("endpoint"), "endpoint")
    check_host(data.get("host"))
    _want(isinstance(data.get("ip"), str) and isinstance(data.get("by"), str)
          and isinstance(data.get("network"), str), "ip, network or by is missing or not text")
    netaddr.IPAddress(data["ip"], version=4, flags=netaddr.INET_PTON)   # AddrFormatError is a ValueError
    _check_time(data.get("time"))


def check_release_request(data: dict) -> None:
    """A request to release an endpoint: pending, or refused with a message."""
    _want(data.get("state") in ("pending", "refused"), f"state {data.get('state')!r} is neither pending nor refused")
    _want(isinstance(data.get("force"), bool), f"force {data.get('force')!r} is not true or false")
    _want(isinstance(data.get("by"), str) and isinstance(data.get("message", ""), str), "by or message is not text")
    _check_time(data.get("time"))


def check_reconcile_counters(data: dict) -> None:
    """A host's running reconcile totals: counts, a count per finding kind, a time."""
    for name in ("runs", "released", "repaired", "errors", "last_run"):
        if name in data:
            _want(isinstance(data[name], (int, float)) and not isinstance(data[name], bool) and data[name] >= 0,
                  f"{name} {data[name]!r} is not a count")
    found = data.get("found", {})
    _want(isinstance(found, dict) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                          for n in found.values()), "found is not a count per kind")
