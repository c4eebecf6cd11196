"""A host's view of etcd (hostview.py) and the endpoint layout under it
(store.py): per-host interest, the old layout read and migrated."""

from __future__ import annotations

import time

from netplugin.hostview import HostView
from netplugin.kv import Put


def wait_in_step(view: HostView, timeout: float = 5.0) -> None:
    stop = time.monotonic() + timeout
    while not view.in_step():
        assert time.monotonic() < stop, "the view did not catch up"
        time.sleep(0.005)


def test_a_host_holds_only_the_endpoints_of_the_networks_it_has_bound(np, np2):
    prod = np.create_network("10.10.0.0/24", vlan=100, name="prod")
    told = []
    np.parts.view.on("endpoints", lambda key, old, new: told.append((old, new)))
    other = np2.create_network("10.20.0.0/24", vlan=200, name="other")
    np2_other = np2.store.find_network("other")
    for _ in range(3):
        np2.run_container(other)
    np.sync()
    assert np.parts.view.endpoints() == [] and told == []          # nothing of "other" reaches h1
    mine = np.run_container(prod)
    np.sync()
    assert [ep.id for ep in np.parts.view.endpoints()] == [mine.endpoint]
    assert [ep.id for ep in np.parts.view.local_endpoints()] == [mine.endpoint]
    assert np.parts.view.bound() == {np.store.find_network("prod").id} != {np2_other.id}

    # The last binding goes: the network's endpoints leave the view, and listeners are told.
    np.stop_container(prod, mine)
    np.remove_network(prod)
    np.sync()
    assert np.parts.view.bound() == set() and np.parts.view.endpoints() == []
    assert any(new is None and old is not None and old.id == mine.endpoint for old, new in told)


def test_records_of_the_old_layout_are_read_and_each_host_moves_its_own(np, np2):
    prod = np.create_network("10.10.0.0/24", vlan=100, name="prod")
    prod2 = np2.create_network("10.10.0.0/24", vlan=100, name="prod")
    mine, theirs = np.run_container(prod), np2.run_container(prod2)
    store = np.store
    # Put both records back where the layout before kept them.
    for c in (mine, theirs):
        ep, _ = store.get_endpoint(c.endpoint)
        store.delete_endpoint(ep.id)
        store.kv.txn([], [Put(store.k_legacy_endpoint(ep.id), ep.to_json())])
    np.sync()
    assert {ep.id for ep in np.parts.view.endpoints()} == {mine.endpoint, theirs.endpoint}
    assert store.get_endpoint(mine.endpoint) is not None
    assert {ep.id for ep in store.list_network_endpoints(store.find_network("prod").id)} == \
        {mine.endpoint, theirs.endpoint}

    assert store.migrate_endpoints("h1") == (1, 0)                 # only its own
    assert store.kv.get(store.k_legacy_endpoint(mine.endpoint)) is None
    assert store.kv.get(store.k_legacy_endpoint(theirs.endpoint)) is not None
    moved, rev = store.get_endpoint(mine.endpoint)
    assert store.kv.get(store.k_endpoint_at(moved)) is not None and rev > 0
    assert store.migrate_endpoints("h1") == (0, 0)                 # idempotent
    np.sync()
    assert {ep.id for ep in np.parts.view.endpoints()} == {mine.endpoint, theirs.endpoint}
    assert [ep.id for ep in store.list_host_endpoints("h1")] == [mine.endpoint]


def test_an_endpoint_filed_under_another_key_is_a_bad_record(np):
    prod = np.create_network("10.10.0.0/24", vlan=100, name="prod")
    c = np.run_container(prod)
    store = np.store
    ep, _ = store.get_endpoint(c.endpoint)
    wrong = store.k_member(ep.network, "h9", ep.id)                 # not its host
    store.kv.txn([], [Put(wrong, ep.to_json())])
    assert [e.id for e in store.list_endpoints()] == [ep.id]
    assert any(key == wrong for key, _, _ in store.scan_bad_records())


def test_a_view_is_not_ready_before_its_first_reads(np):
    view = HostView(np.store, "h7")
    assert not view.ready()
    view.start()
    try:
        assert view.ready(5.0) and view.status()["ready"]
    finally:
        view.close()
