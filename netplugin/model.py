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

from .errors import InvalidRequest

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
DOCKER_ID_RE = re.compile(r"^[0-9a-f]{64}$")
NETWORK_ID_RE = re.compile(r"^n-[0-9a-f]{12}$")
VLAN_RE = re.compile(r"-?[0-9]{1,9}")
SANDBOX_RE = re.compile(r"(/[A-Za-z0-9_.-]+)+")
MIN_PREFIXLEN = 16   # at most 65,536 addresses: one layer-2 domain, never more
MAX_PREFIXLEN = 30

ALLOC_ENDPOINT = "endpoint"
ALLOC_GATEWAY = "gateway"
ALLOC_AUX = "aux"


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


@dataclass
class Allocation(Record):
    ip: str
    kind: str
    host: str
    endpoint: str = ""
    network: str = ""
    created: float = field(default_factory=time.time)


@dataclass
class Binding(Record):
    """Which global network one host's Docker network stands for."""

    docker_network: str
    network: str
    host: str
    pool: str = ""
    created: float = field(default_factory=time.time)


@dataclass
class Profile(Record):
    """A bandwidth profile: what a container may send, in kbit/s, with a burst in kbit."""

    name: str
    rate_kbps: int
    burst_kb: int
    created: float = field(default_factory=time.time)


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


# -- validation helpers shared by the API, netctl and the driver -------------

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
