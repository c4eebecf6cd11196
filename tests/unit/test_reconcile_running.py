"""The reconciler never removes the port, veth or endpoint of a container
that Docker reports running, whatever else it believes (Reconciler._act asks
Docker afresh, on every network, before any removal): here its view of this
host's networks is wrong (the binding was lost, so the scan sees no live
container), and every removal it plans must be refused."""

from __future__ import annotations

import pytest

from netplugin.dataplane.links import veth_names

# The fixtures (clock, view, rec, net) are test_reconcile's own, shared here.
from .test_reconcile import HOUR, clock, datapath, net, rec, record, view  # noqa: F401


def lose(np, c, what: str) -> None:
    """What the reconciler is made to believe, besides 'no container is live'."""
    if what in ("record", "record_and_port"):
        np.store.delete_endpoint(c.endpoint)
    if what == "record_and_port":
        np.switch.delete_port(veth_names(c.endpoint)[0])


@pytest.mark.parametrize("believed", ["nothing_else", "record", "record_and_port"])
def test_a_running_container_keeps_its_port_and_veth_whatever_the_scan_believes(np, net, rec, view, clock, believed):
    c = np.run_container(net)
    port = veth_names(c.endpoint)[0]
    view.attach(c.endpoint, "f" * 64, c.ip)                 # running, on a network the scan does not ask about
    np.store.delete_binding(np.cfg.host_id, net.id)         # this host's binding is lost
    lose(np, c, believed)
    clock.advance(HOUR)
    before = datapath(np)
    kept = record(np, c.endpoint)

    report = rec.run(grace=60)
    planned = [f for f in report["findings"] if f["action"] == "release"]
    assert planned, f"the scan should have planned a removal: {report['findings']}"
    for f in planned:
        assert not f["done"] and "Docker reports the container" in f["error"] and "running" in f["error"], f
    assert datapath(np) == before
    assert port in np.links.links
    assert record(np, c.endpoint) == kept


def test_nothing_is_removed_when_docker_cannot_be_asked_at_the_moment_of_acting(np, net, rec, view, clock,
                                                                                 monkeypatch):
    c = np.run_container(net)                              # no container per Docker: a leak, it seems
    clock.advance(HOUR)
    before = datapath(np)
    monkeypatch.setattr(view, "running_endpoints", lambda: None)
    report = rec.run(grace=60)
    [f] = report["findings"]
    assert f["kind"] == "endpoint_without_container" and not f["done"]
    assert "Docker could not be asked" in f["error"]
    assert datapath(np) == before and record(np, c.endpoint) is not None


def test_a_container_that_stopped_is_still_released(np, net, rec, view, clock):
    """The check refuses only what runs: a real leak still goes."""
    c = np.run_container(net)
    clock.advance(HOUR)
    report = rec.run(grace=60)
    assert [(f["kind"], f["done"]) for f in report["findings"]] == [("endpoint_without_container", True)]
    assert record(np, c.endpoint) is None
