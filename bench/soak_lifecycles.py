"""Soak: many endpoint create/delete cycles, strictly one after another, through
the plugin socket exactly as Docker drives them (RequestAddress, CreateEndpoint,
Join, Leave, DeleteEndpoint, ReleaseAddress), then a leak check: no OVS port,
veth, meter, endpoint flow, endpoint record or address claim may be left, and
the etcd keys must be those of before. The long variant of the fault ring's
1,000 cycles (tests/fault/test_load.py), which runs them in 8 streams to fit CI.

    sudo .venv/bin/python bench/soak_lifecycles.py --cycles 5000 --limited-every 3

Its daemon is the fault ring's (socket /run/docker/plugins/npfbsoak.sock, its own
etcd prefix, bridge and host id); subnets 10.251.40.0/24 and 10.251.41.0/24, VLANs
3640-3641. Prints figures; exits 1 when something was left behind.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fault.faultkit import Daemon, host_veths, remove_networks, wait_until  # noqa: E402

CAPPED, PLAIN = "10.251.40.0/24", "10.251.41.0/24"
METHODS = ("IpamDriver.RequestAddress", "NetworkDriver.CreateEndpoint", "NetworkDriver.Join",
           "NetworkDriver.Leave", "NetworkDriver.DeleteEndpoint", "IpamDriver.ReleaseAddress")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, default=5000)
    p.add_argument("--limited-every", type=int, default=3, help="one cycle in N on the rate-limited network")
    args = p.parse_args()
    d = Daemon(Path(tempfile.mkdtemp(prefix="soak-")), "npfbsoak")
    d.start()
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    try:
        d.netctl("profile", "create", "soak-cap", "--rate", "20mbit")
        nets = {CAPPED: d.network("soak-capped", CAPPED, "vlan=3640", "profile=soak-cap"),
                PLAIN: d.network("soak-plain", PLAIN, "vlan=3641")}
        wait_until(lambda: not d.endpoint_flows(), 10)
        keys0, flows0, veths0 = set(d.etcd_keys()), sorted(d.flows()), host_veths()

        def call(method: str, body: dict) -> dict:
            t = time.monotonic()
            status, reply = d.call(method, body)
            times[method].append(time.monotonic() - t)
            if status != 200:
                raise SystemExit(f"{method} -> {status} {reply}")
            return reply

        t0 = time.monotonic()
        for i in range(args.cycles):
            pool = CAPPED if i % args.limited_every == 0 else PLAIN
            net, eid = nets[pool], secrets.token_hex(32)
            addr = call(METHODS[0], {"PoolID": pool, "Address": "", "Options": {}})["Address"]
            call(METHODS[1], {"NetworkID": net, "EndpointID": eid, "Options": {},
                              "Interface": {"Address": addr, "AddressIPv6": "", "MacAddress": ""}})
            call(METHODS[2], {"NetworkID": net, "EndpointID": eid, "SandboxKey": "", "Options": {}})
            call(METHODS[3], {"NetworkID": net, "EndpointID": eid})
            call(METHODS[4], {"NetworkID": net, "EndpointID": eid})
            call(METHODS[5], {"PoolID": pool, "Address": addr.split("/")[0]})
            if (i + 1) % 500 == 0:
                print(f"{i + 1} cycles, {(i + 1) / (time.monotonic() - t0):.1f}/s", flush=True)
        elapsed = time.monotonic() - t0
        print(f"{args.cycles} cycles in {elapsed:.1f} s ({args.cycles / elapsed:.1f}/s)")
        for m, ts in times.items():
            ts.sort()
            p99 = ts[int(len(ts) * 0.99)]
            print(f"  {m:32} median {statistics.median(ts) * 1000:6.1f} ms   p99 {p99 * 1000:6.1f} ms")

        def clean() -> bool:
            return (not d.ports() and not d.meters() and sorted(d.flows()) == flows0
                    and set(d.etcd_keys()) == keys0)
        wait_until(clean, 20, every=1)
        left = {"ports": d.ports(), "meters": d.meters(), "flows": sorted(set(d.flows()) ^ set(flows0)),
                "keys": sorted(set(d.etcd_keys()) ^ keys0), "veths": sorted(d.loose_veths(veths0)),
                "records": [ep.id[:12] for ep in d.records()]}
        bad = {k: v for k, v in left.items() if v}
        print("left behind:", bad or "nothing")
        return 1 if bad else 0
    finally:
        remove_networks("npfbsoak")
        d.cleanup()


if __name__ == "__main__":
    sys.exit(main())
