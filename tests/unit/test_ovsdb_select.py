"""ovsdb_select and Switch's snapshot reads against a scripted OVSDB server
on a unix socket: what is asked (one transact of the named columns), how an
answer that arrives in pieces, after an echo, or not at all is read, and how
the rows become the Switch's listings (the real ring checks them against
ovsdb-server: tests/integration/test_ovsdb_select.py)."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time

import pytest

from netplugin.dataplane import ovsdb_select
from netplugin.dataplane.ovs import EXT_ENDPOINT, Switch
from netplugin.errors import DataplaneError, DataplaneUnavailable


class Server:
    """Accepts connections; each one gets the request read, then ``answer(request)``:
    a list of byte strings, sent with a pause between them."""

    def __init__(self, answer):
        self.folder = tempfile.mkdtemp(prefix="np-ovsdb-")
        self.path = os.path.join(self.folder, "db.sock")
        self.answer = answer
        self.requests: list[dict] = []
        self.replies: list[dict] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(4)
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def remote(self) -> str:
        return "unix:" + self.path

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                decoder, buf = json.JSONDecoder(), ""
                while True:
                    buf += conn.recv(65536).decode()
                    try:
                        request, _ = decoder.raw_decode(buf)
                        break
                    except json.JSONDecodeError:
                        continue
                self.requests.append(request)
                for piece in self.answer(request):
                    conn.sendall(piece)
                    time.sleep(0.01)
                conn.settimeout(0.3)
                try:                                      # what the client says afterwards (an echo reply)
                    rest = conn.recv(65536)
                    if rest:
                        self.replies.append(json.loads(rest))
                except (TimeoutError, OSError, ValueError):
                    pass

    def close(self) -> None:
        self.sock.close()


def reply(request: dict, results: list) -> bytes:
    return json.dumps({"id": request["id"], "result": results, "error": None}).encode()


def rows_for(tables: dict[str, list[dict]]):
    def answer(request):
        ops = request["params"][1:]
        return [reply(request, [{"rows": tables[op["table"]]} for op in ops])]
    return answer


@pytest.fixture
def server_of():
    made: list[Server] = []

    def make(answer) -> Server:
        made.append(Server(answer))
        return made[-1]
    yield make
    for s in made:
        s.close()


BRIDGE_ROWS = [
    {"name": "br-np", "ports": ["set", [["uuid", "u1"], ["uuid", "u2"], ["uuid", "u3"]]]},
    {"name": "br-other", "ports": ["uuid", "u4"]},           # a one-element set comes bare
    {"name": "br-empty", "ports": ["set", []]},
    {"name": "br-own", "ports": ["uuid", "u6"]},
]
PORT_ROWS = [
    {"_uuid": ["uuid", "u1"], "name": "np0000000001", "tag": 10,
     "external_ids": ["map", [[EXT_ENDPOINT, "a" * 64], ["np-host", "h1"]]]},
    {"_uuid": ["uuid", "u2"], "name": "uplink0", "tag": ["set", []], "external_ids": ["map", []]},
    {"_uuid": ["uuid", "u3"], "name": "np0000000003", "tag": ["set", []],
     "external_ids": ["map", [[EXT_ENDPOINT, "c" * 64]]]},
    {"_uuid": ["uuid", "u4"], "name": "np0000000004", "tag": 20,
     "external_ids": ["map", [[EXT_ENDPOINT, "d" * 64]]]},
    {"_uuid": ["uuid", "u9"], "name": "np0000000009", "tag": 30,          # on no bridge
     "external_ids": ["map", [[EXT_ENDPOINT, "e" * 64]]]},
    {"_uuid": ["uuid", "u6"], "name": "br-own", "tag": ["set", []], "external_ids": ["map", []]},   # its own port
    {"_uuid": ["uuid", "u5"], "name": 5, "tag": 1, "external_ids": ["map", []]},   # bad: skipped
    {"_uuid": ["uuid", "u1"], "name": "np000000000x", "tag": 10,
     "external_ids": ["map", [[EXT_ENDPOINT, 7]]]},                    # bad map on a bridge: skipped
]


def test_one_transact_asks_for_the_named_columns_only(server_of):
    srv = server_of(rows_for({"Bridge": BRIDGE_ROWS, "Port": PORT_ROWS}))
    got = ovsdb_select.select(srv.remote, {"Bridge": ["name", "ports"], "Port": ["_uuid", "name"]}, timeout=5)
    assert got == {"Bridge": BRIDGE_ROWS, "Port": PORT_ROWS}
    (request,) = srv.requests
    assert request["method"] == "transact" and request["params"][0] == "Open_vSwitch"
    assert request["params"][1:] == [
        {"op": "select", "table": "Bridge", "where": [], "columns": ["name", "ports"]},
        {"op": "select", "table": "Port", "where": [], "columns": ["_uuid", "name"]}]


def test_an_answer_in_many_pieces_after_an_echo_is_read_whole(server_of):
    big = [{"_uuid": ["uuid", f"u{i}"], "name": f"np{i:011x}", "tag": 5,
            "external_ids": ["map", [[EXT_ENDPOINT, "{}}" + "f" * 61]]]} for i in range(3000)]

    def answer(request):
        body = reply(request, [{"rows": big}])
        pieces = [body[i:i + 7001] for i in range(0, len(body), 7001)]     # cuts inside strings and after '}'
        return [b'{"method":"echo","params":["x"],"id":"echo"}', *pieces]
    srv = server_of(answer)
    got = ovsdb_select.select(srv.remote, {"Port": ["_uuid", "name", "tag", "external_ids"]}, timeout=10)
    assert got["Port"] == big
    give_up = time.monotonic() + 3                       # the server reads what came back after its last piece
    while not srv.replies and time.monotonic() < give_up:
        time.sleep(0.01)
    assert srv.replies == [{"id": "echo", "result": ["x"], "error": None}]


def test_a_server_that_never_answers_gives_up_in_time(server_of):
    srv = server_of(lambda request: [])
    t0 = time.monotonic()
    with pytest.raises(ovsdb_select.SelectUnavailable, match=r"in time|closed"):
        ovsdb_select.select(srv.remote, {"Bridge": ["name"]}, timeout=0.5)
    assert time.monotonic() - t0 < 2


def test_errors_are_told_apart(server_of):
    srv = server_of(lambda r: [json.dumps({"id": r["id"], "result": None, "error": "unknown database"}).encode()])
    with pytest.raises(ovsdb_select.SelectRefused, match="unknown database"):
        ovsdb_select.select(srv.remote, {"Bridge": ["name"]}, timeout=5)
    srv = server_of(lambda r: [reply(r, [{"error": "unknown column", "details": "no column nope in Bridge"}])])
    with pytest.raises(ovsdb_select.SelectRefused, match="no column nope"):
        ovsdb_select.select(srv.remote, {"Bridge": ["nope"]}, timeout=5)
    with pytest.raises(ovsdb_select.SelectUnavailable, match="cannot connect"):
        ovsdb_select.select("unix:/nonexistent/db.sock", {"Bridge": ["name"]}, timeout=1)


def test_which_remotes_it_opens():
    assert ovsdb_select.supports("unix:/var/run/openvswitch/db.sock")
    assert ovsdb_select.supports("tcp:127.0.0.1:6640") and ovsdb_select.supports("tcp:[::1]:6640")
    assert not ovsdb_select.supports("ssl:127.0.0.1:6640")
    assert not ovsdb_select.supports("tcp:a b:1")
    assert not Switch("ssl:127.0.0.1:6640", snapshot_reads=True).snapshot_reads     # the IDL serves it


def test_snapshot_reads_give_the_switch_listings(server_of):
    srv = server_of(rows_for({"Bridge": BRIDGE_ROWS, "Port": PORT_ROWS}))
    switch = Switch(srv.remote, snapshot_reads=True)
    assert switch.bridge_exists("br-np") and switch.bridge_exists("br-empty")
    assert not switch.bridge_exists("br-n")
    assert sorted(switch.list_ports("br-np"), key=lambda p: p["name"]) == [
        {"name": "np0000000001", "tag": 10, "external_ids": {EXT_ENDPOINT: "a" * 64, "np-host": "h1"}},
        {"name": "np0000000003", "tag": None, "external_ids": {EXT_ENDPOINT: "c" * 64}}]
    assert switch.list_ports("br-other") == [{"name": "np0000000004", "tag": 20,
                                               "external_ids": {EXT_ENDPOINT: "d" * 64}}]
    assert switch.list_ports("br-missing") == []
    assert switch.port_bridges() == {"np0000000001": "br-np", "uplink0": "br-np", "np0000000003": "br-np",
                                     "np0000000004": "br-other", "np000000000x": "br-np"}
    asked = {op["table"]: op["columns"] for r in srv.requests for op in r["params"][1:]}
    assert asked == {"Bridge": ["name", "ports"], "Port": ["_uuid", "name"]}   # the last call's columns
    assert "Interface" not in json.dumps(srv.requests)


def test_snapshot_read_failures_are_dataplane_errors(server_of):
    with pytest.raises(DataplaneUnavailable, match=r"unix:/nonexistent/db\.sock.*ovsdb-server"):
        Switch("unix:/nonexistent/db.sock", snapshot_reads=True).list_ports("br")
    srv = server_of(lambda r: [reply(r, [{"error": "unknown table"}])])
    with pytest.raises(DataplaneError, match=r"refused to look up bridges: .*unknown table"):
        Switch(srv.remote, snapshot_reads=True).bridge_exists("br")
