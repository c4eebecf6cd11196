"""The OpenFlow connection (netplugin/dataplane/ofchannel.py) against a small
switch stand-in on a unix socket, speaking OpenFlow 1.3 through os-ken's
parser: refusals come back per message, echo requests are answered, and a
switch that closes the connection (a vswitchd restart) is connected to again."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

import pytest
from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from netplugin.dataplane.flows import Flows, cookie_for
from netplugin.dataplane.ofchannel import DATAPATH, OpenFlowChannel, OpenFlowRefused, rundir_of
from netplugin.errors import DataplaneError, DataplaneUnavailable

REFUSED_COOKIE = 0xBAD


class Switch:
    """Accepts connections one after another; refuses flow-mods with REFUSED_COOKIE,
    answers barriers and aggregate requests, and records every flow-mod."""

    def __init__(self, path: str, hello_version: int = ofp.OFP_VERSION):
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(4)
        self.hello_version = hello_version
        self.flow_mods: list[int] = []           # cookies, in arrival order
        self.accepted = 0
        self.echo_first = False
        self.echo_replied = threading.Event()
        self.drop_after: int | None = None       # close the connection after this many flow-mods
        self.conn: socket.socket | None = None
        threading.Thread(target=self.serve, daemon=True).start()

    def send(self, conn: socket.socket, msg, xid: int = 0) -> None:
        msg.set_xid(xid)
        msg.serialize()
        conn.sendall(bytes(msg.buf))

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.accepted += 1
            self.conn = conn
            with contextlib.suppress(OSError):
                self.talk(conn)
            conn.close()

    def talk(self, conn: socket.socket) -> None:
        raw = parser.OFPHello(DATAPATH)
        raw.set_xid(1)
        raw.serialize()
        hello = bytearray(raw.buf)
        hello[0] = self.hello_version
        conn.sendall(bytes(hello))
        if self.echo_first:
            self.send(conn, parser.OFPEchoRequest(DATAPATH, data=b"hi"), 77)
        buf = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buf += chunk
            while len(buf) >= 8:
                _, msg_type, length, xid = ofproto_parser.header(buf)
                if len(buf) < length:
                    break
                raw, buf = buf[:length], buf[length:]
                if not self.answer(conn, msg_type, xid, raw):
                    return

    def answer(self, conn: socket.socket, msg_type: int, xid: int, raw: bytes) -> bool:
        """os-ken parses what a switch sends; requests are told apart by their type here."""
        if msg_type == ofp.OFPT_BARRIER_REQUEST:
            self.send(conn, parser.OFPBarrierReply(DATAPATH), xid)
            return True
        if msg_type == ofp.OFPT_MULTIPART_REQUEST and int.from_bytes(raw[8:10], "big") == ofp.OFPMP_AGGREGATE:
            # os-ken encodes no replies: header, multipart type and flags, then ofp_aggregate_stats_reply.
            body = struct.pack("!HH4xQQI4x", ofp.OFPMP_AGGREGATE, 0, 0, 0, len(self.flow_mods))
            conn.sendall(struct.pack("!BBHI", ofp.OFP_VERSION, ofp.OFPT_MULTIPART_REPLY, 8 + len(body), xid) + body)
            return True
        msg = ofproto_parser.msg(DATAPATH, ofp.OFP_VERSION, msg_type, len(raw), xid, raw)
        if isinstance(msg, parser.OFPEchoReply) and msg.xid == 77 and msg.data == b"hi":
            self.echo_replied.set()
        elif isinstance(msg, parser.OFPFlowMod):
            self.flow_mods.append(msg.cookie)
            if self.drop_after is not None and len(self.flow_mods) >= self.drop_after:
                self.drop_after = None
                return False                     # gone before answering, as a restarting vswitchd
            if msg.cookie == REFUSED_COOKIE:
                self.send(conn, parser.OFPErrorMsg(DATAPATH, type_=ofp.OFPET_BAD_ACTION,
                                                   code=ofp.OFPBAC_BAD_OUT_PORT, data=b""), msg.xid)
        return True

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def switch(tmp_path):
    s = Switch(str(tmp_path / "br0.mgmt"))
    yield s
    s.close()


def flow(cookie: int):
    return parser.OFPFlowMod(DATAPATH, cookie=cookie, table_id=0, command=ofp.OFPFC_ADD,
                             buffer_id=ofp.OFP_NO_BUFFER, out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
                             match=parser.OFPMatch(in_port=1), instructions=[])


def test_each_refusal_names_its_message_and_the_others_are_applied(tmp_path, switch):
    ch = OpenFlowChannel("br0", str(tmp_path), timeout=2)
    refused = ch.send([flow(1), flow(REFUSED_COOKIE), flow(3)], ["first", "the bad one", "third"])
    assert switch.flow_mods == [1, REFUSED_COOKIE, 3]
    assert [r.message for r in refused] == ["bridge br0 refused the bad one: OFPET_BAD_ACTION OFPBAC_BAD_OUT_PORT"]
    assert (refused[0].err_type, refused[0].code) == (ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_OUT_PORT)
    assert ch.send([flow(4)], ["fourth"]) == [] and ch.connects == 1


def test_a_refusal_is_an_error_to_the_caller_of_flows(tmp_path, switch):
    flows = Flows("br0", 2, str(tmp_path))
    with pytest.raises(OpenFlowRefused) as exc:
        flows.delete_cookies([5, REFUSED_COOKIE, REFUSED_COOKIE])
    assert "refused deleting the flows of cookie 0xbad" in exc.value.message
    assert "and 1 more refused" in exc.value.message
    flows.delete_endpoint_flows("ab" * 32)                  # answered: no error
    assert switch.flow_mods[-1] == cookie_for("ab" * 32)


def test_echo_requests_are_answered(tmp_path, switch):
    switch.echo_first = True
    ch = OpenFlowChannel("br0", str(tmp_path), timeout=2)
    assert ch.send([flow(1)], ["one"]) == []
    assert switch.echo_replied.wait(2)


def test_a_closed_connection_is_made_again_and_the_change_sent_once_more(tmp_path, switch):
    ch = OpenFlowChannel("br0", str(tmp_path), timeout=2)
    assert ch.send([flow(1)], ["one"]) == []
    switch.drop_after = 2                                    # the next flow-mod dies with the connection
    assert ch.send([flow(2)], ["two"]) == []
    assert switch.flow_mods == [1, 2, 2] and ch.connects == 2 and switch.accepted == 2
    ch.close()                                               # the stand-in serves one connection at a time
    assert Flows("br0", 2, str(tmp_path)).count(0, ours=False) == 3


def test_no_switch_is_unavailable_with_what_to_do(tmp_path):
    with pytest.raises(DataplaneUnavailable) as exc:
        OpenFlowChannel("br0", str(tmp_path), timeout=1).send([flow(1)], ["one"])
    assert f"{tmp_path}/br0.mgmt" in exc.value.message and "check that ovs-vswitchd runs" in exc.value.message


def test_a_bridge_without_openflow_13_is_refused_with_the_setting_to_change(tmp_path):
    old = Switch(str(tmp_path / "br0.mgmt"), hello_version=0x01)
    try:
        with pytest.raises(DataplaneError) as exc:
            OpenFlowChannel("br0", str(tmp_path), timeout=1).send([flow(1)], ["one"])
        assert "protocols=OpenFlow10,OpenFlow13" in exc.value.message
        assert old.flow_mods == []
    finally:
        old.close()


def test_run_directory_is_the_ovsdb_sockets():
    assert rundir_of("unix:/var/run/openvswitch/db.sock") == "/var/run/openvswitch"
    assert rundir_of("unix:/tmp/x/db.sock") == "/tmp/x"
