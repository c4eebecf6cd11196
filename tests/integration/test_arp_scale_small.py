"""The ARP proxy's answers in bulk, through the product's Flows on a real netdev
bridge: 2,000 answers installed in one call (a cold start's resync), then one
added and one deleted (a pass woken by one change). Table 10 must hold exactly
the expected cookies each time. Correctness only; the timings at 50,000 are
bench/bench_arp_scale.py's (docs/benchmarks.md, "ARP answers at scale")."""

from __future__ import annotations

import secrets

from netplugin.dataplane.flows import KIND_ARP_LOCAL, TABLE_ARP, Flows, cookie_for

N = 2000
VLAN = 3901


def answer(flows: Flows, i: int) -> tuple[int, str]:
    """(cookie, flow text) of an answer for 10.77.x.y with the product's derived MAC."""
    ip = f"10.77.{i // 250}.{i % 250 + 1}"
    mac = "02:4e:" + ":".join(f"{int(o):02x}" for o in ip.split("."))
    eid = secrets.token_hex(32)
    return cookie_for(eid, KIND_ARP_LOCAL), flows.arp_answer(eid, ip, mac, VLAN, None)


def test_two_thousand_answers_then_one_change(switch, bridge):
    switch.ensure_bridge(bridge, "netdev")
    flows = Flows(bridge)                       # the product's default timeout
    flows.ensure_pipeline()
    made = dict(answer(flows, i) for i in range(N))
    assert len(made) == N, "two answers got the same cookie: endpoint ids collided in their first 15 hex digits"

    flows.add_flows(list(made.values()))
    held = flows.cookies(TABLE_ARP)
    assert held == set(made), f"after the install: {len(set(made) - held)} missing, {len(held - set(made))} extra"

    new_cookie, new_text = answer(flows, N)     # an address no other answer has
    gone = sorted(made)[N // 2]
    flows.add_flows([new_text])
    flows.delete_cookies([gone])
    want = (set(made) - {gone}) | {new_cookie}
    held = flows.cookies(TABLE_ARP)
    assert new_cookie in held, "the added answer is not in table 10"
    assert gone not in held, "the deleted answer is still in table 10"
    assert held == want, f"after one change: {len(want - held)} missing, {len(held - want)} extra"

    # table 10 holds the answers and its table-miss flow, nothing else
    table10 = [line for line in flows.dump_flows().splitlines() if f"table={TABLE_ARP}," in line]
    assert len(table10) == N + 1, f"table 10 holds {len(table10)} flows, expected {N} answers and the table-miss"
    assert sum(1 for line in table10 if "priority=0 " in line and line.endswith("actions=NORMAL")) == 1
