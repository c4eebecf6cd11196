"""The ARP proxy over the host's view (arp_proxy.py, hostview.py): it answers
for the endpoints of the networks this host has bound, none of others'; a
full pass counts table 10 and reads it whole only when the count is off."""

from __future__ import annotations

from netplugin.dataplane.flows import KIND_ARP_LOCAL, TABLE_ARP, cookie_for


def answers(h) -> set[int]:
    return h.flows.cookies(TABLE_ARP)


def test_answers_follow_the_bound_networks_only(np, np2):
    net1 = np.create_network("10.10.0.0/24", vlan=100, name="prod")
    mine = np.run_container(net1)
    net2 = np2.create_network("10.20.0.0/24", vlan=200, name="other")
    theirs = np2.run_container(net2)
    np.sync()
    np.arp.resync()
    assert cookie_for(mine.endpoint, KIND_ARP_LOCAL) in answers(np)
    assert cookie_for(theirs.endpoint, KIND_ARP_LOCAL) not in answers(np)
    assert np.parts.view.bound() == {np.store.find_network("prod").id}
    assert all(ep.network != np.store.find_network("other").id for ep in np.parts.view.endpoints())

    # h2 binds prod too and runs a container there: h1 answers for it.
    shared = np2.create_network("10.10.0.0/24", vlan=100, name="prod")
    neighbour = np2.run_container(shared)
    np.sync()
    np.arp.resync()
    assert cookie_for(neighbour.endpoint, KIND_ARP_LOCAL) in answers(np)


def test_a_full_pass_counts_and_reads_the_table_only_when_the_count_is_off(np, monkeypatch):
    net = np.create_network("10.10.0.0/24", vlan=100, name="prod")
    c = np.run_container(net)
    np.sync()
    np.arp.resync(full=True)                 # the first full pass reads the table
    dumps = []
    real = np.flows.cookies
    monkeypatch.setattr(np.flows, "cookies", lambda table: dumps.append(table) or real(table))
    assert np.arp.resync(full=True) == (0, 0) and dumps == []     # counted, not read
    np.flows.delete_cookies([cookie_for(c.endpoint, KIND_ARP_LOCAL)])     # a hand edit
    assert np.arp.resync(full=True) == (1, 0) and dumps == [TABLE_ARP]
    assert cookie_for(c.endpoint, KIND_ARP_LOCAL) in answers(np)
