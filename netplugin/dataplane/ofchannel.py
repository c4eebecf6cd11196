"""One long-lived OpenFlow 1.3 connection to a bridge, for flows and meters.

The connection is the one ``ovs-ofctl`` opens for each run: ovs-vswitchd's
management socket of the bridge, ``<rundir>/<bridge>.mgmt`` (a unix socket;
nothing listens anywhere, and nothing outside this host can reach it). Messages
are built and read by os-ken's OpenFlow 1.3 parser (os-ken's controller, which
runs on eventlet, is not used: a lock and a blocking socket are enough here).

Every change is answered: ``send`` writes its messages, then a barrier, and
reads until the barrier's reply; an error the switch returns for any of the
messages is raised as ``OpenFlowRefused`` naming the message, its type and
code. ovs-vswitchd closing the socket (a restart) is noticed on the next
exchange, which connects again and is sent once more: every message this
module's callers send is idempotent or handled as such (flows are added with
replace semantics, meters added or modified by whichever the switch accepts).
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Sequence

from os_ken.ofproto import ofproto_parser, ofproto_protocol
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from ..errors import DataplaneError, DataplaneUnavailable

DATAPATH = ofproto_protocol.ProtocolDesc(ofp.OFP_VERSION)   # what os-ken's messages encode for
HEADER = ofp.OFP_HEADER_SIZE
DEFAULT_RUNDIR = "/var/run/openvswitch"

# Error type -> the prefix of its codes' names in ofproto_v1_3, for messages.
_CODE_PREFIX = {ofp.OFPET_HELLO_FAILED: "OFPHFC_", ofp.OFPET_BAD_REQUEST: "OFPBRC_", ofp.OFPET_BAD_ACTION: "OFPBAC_",
                ofp.OFPET_BAD_INSTRUCTION: "OFPBIC_", ofp.OFPET_BAD_MATCH: "OFPBMC_",
                ofp.OFPET_FLOW_MOD_FAILED: "OFPFMFC_", ofp.OFPET_METER_MOD_FAILED: "OFPMMFC_"}


def _name(prefix: str, value: int) -> str:
    names = [n for n in dir(ofp) if n.startswith(prefix) and getattr(ofp, n) == value]
    return names[0] if names else str(value)


class OpenFlowRefused(DataplaneError):
    """The switch answered one message with an OpenFlow error."""

    def __init__(self, what: str, err_type: int, code: int, bridge: str):
        self.err_type, self.code = err_type, code
        type_name = _name("OFPET_", err_type)
        code_name = _name(_CODE_PREFIX.get(err_type, "-"), code)
        super().__init__(f"bridge {bridge} refused {what}: {type_name} {code_name}")


def rundir_of(ovsdb: str) -> str:
    """ovs-vswitchd's run directory: the OVSDB socket's directory for ``unix:``, else the default."""
    if ovsdb.startswith("unix:"):
        return os.path.dirname(ovsdb[len("unix:"):]) or "/"
    return os.environ.get("OVS_RUNDIR", DEFAULT_RUNDIR)


class OpenFlowChannel:
    def __init__(self, bridge: str, rundir: str = DEFAULT_RUNDIR, timeout: float = 5.0):
        self.bridge = bridge            # checked by the caller (flows.py's bridge name pattern)
        self.path = os.path.join(rundir, f"{bridge}.mgmt")
        self.timeout = timeout
        self.connects = 0               # connections made (the first one included): metrics, tests
        self._sock: socket.socket | None = None
        self._buf = b""
        self._xid = 0
        self._lock = threading.Lock()
        self._pid = os.getpid()

    # -- the connection ------------------------------------------------------------------
    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
            self._buf = b""
            self._sock = sock
            hello = parser.OFPHello(DATAPATH)
            self._write([hello])
            reply = self._read(time.monotonic() + self.timeout)
        except OSError as exc:
            sock.close()
            self._sock = None
            raise DataplaneUnavailable(f"ovs-vswitchd is not reachable for bridge {self.bridge} at {self.path} "
                                       f"({exc}); check that ovs-vswitchd runs and the bridge exists") from None
        if isinstance(reply, parser.OFPErrorMsg) or reply is None:
            self._close()                # under _exchange's lock
            raise DataplaneError(f"bridge {self.bridge} refused an OpenFlow 1.3 connection: set its protocols "
                                 "to include OpenFlow13 (ovs-vsctl set bridge BR protocols=OpenFlow10,OpenFlow13)")
        self.connects += 1
        return sock

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- framing ---------------------------------------------------------------------------
    def _next_xid(self) -> int:
        self._xid = (self._xid + 1) & 0xFFFFFFFF or 1
        return self._xid

    def _write(self, msgs: Sequence) -> None:
        data = bytearray()
        for msg in msgs:
            if msg.xid is None:
                msg.set_xid(self._next_xid())
            msg.serialize()
            data += msg.buf
        if self._sock is None:
            raise OSError("not connected")
        self._sock.sendall(bytes(data))

    def _read(self, deadline: float):
        """One message (echo requests answered on the way), None for a hello below
        OpenFlow 1.3; raises OSError on EOF or timeout."""
        if self._sock is None:
            raise OSError("not connected")
        while True:
            if len(self._buf) >= HEADER:
                version, msg_type, msg_len, xid = ofproto_parser.header(self._buf)
                if msg_len < HEADER:
                    raise OSError(f"a message of {msg_len} bytes from {self.path}")
                if len(self._buf) >= msg_len:
                    raw, self._buf = self._buf[:msg_len], self._buf[msg_len:]
                    if msg_type == ofp.OFPT_ECHO_REQUEST:
                        echo = parser.OFPEchoReply(DATAPATH, data=raw[HEADER:])
                        echo.set_xid(xid)
                        self._write([echo])
                        continue
                    if msg_type == ofp.OFPT_HELLO and version < ofp.OFP_VERSION:
                        return None                      # the bridge does not speak OpenFlow 1.3
                    if version != ofp.OFP_VERSION and msg_type != ofp.OFPT_HELLO:
                        continue
                    return ofproto_parser.msg(DATAPATH, version, msg_type, msg_len, xid, raw)
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._sock], [], [], left)[0]:
                raise OSError(f"no answer from {self.path} within {self.timeout:g} s")
            chunk = self._sock.recv(65536)
            if not chunk:
                raise OSError(f"ovs-vswitchd closed {self.path}")
            self._buf += chunk

    # -- exchanges -------------------------------------------------------------------------
    def _exchange(self, fn):
        """fn() over a live connection; after a broken one (vswitchd restarted), once more on a new one."""
        with self._lock:
            if self._pid != os.getpid():         # a forked child: the socket is the parent's
                self._sock, self._buf, self._pid = None, b"", os.getpid()
            for attempt in (1, 2):
                try:
                    if self._sock is None:
                        self._connect()
                    return fn()
                except OSError as exc:
                    self._close()
                    if attempt == 2:
                        raise DataplaneUnavailable(f"OpenFlow connection to bridge {self.bridge} broke ({exc}); "
                                                   "check ovs-vswitchd") from None
        raise AssertionError("unreachable")

    def send(self, msgs: Sequence, what: Sequence[str]) -> list[OpenFlowRefused]:
        """Send changes in order, then a barrier; the switch's refusals, one per refused
        message (``what[i]`` names message i in them). An empty list: all were applied."""
        if not msgs:
            return []

        def run() -> list[OpenFlowRefused]:
            for msg in msgs:
                msg.xid = None
                msg.set_xid(self._next_xid())
            barrier = parser.OFPBarrierRequest(DATAPATH)
            self._write([*msgs, barrier])
            index = {msg.xid: i for i, msg in enumerate(msgs)}
            refused: list[OpenFlowRefused] = []
            deadline = time.monotonic() + self.timeout
            while True:
                reply = self._read(deadline)
                if reply is None:
                    continue
                if reply.xid == barrier.xid and isinstance(reply, parser.OFPBarrierReply):
                    return refused
                if isinstance(reply, parser.OFPErrorMsg) and reply.xid in index:
                    refused.append(OpenFlowRefused(what[index[reply.xid]], reply.type, reply.code, self.bridge))
        result: list[OpenFlowRefused] = self._exchange(run)
        return result

    def request(self, msg, what: str) -> list:
        """A multipart request; the bodies of every reply part, in order."""
        def run() -> list:
            msg.xid = None
            msg.set_xid(self._next_xid())
            self._write([msg])
            body: list = []
            deadline = time.monotonic() + self.timeout
            while True:
                reply = self._read(deadline)
                if reply is None or reply.xid != msg.xid:
                    continue
                if isinstance(reply, parser.OFPErrorMsg):
                    raise OpenFlowRefused(what, reply.type, reply.code, self.bridge)
                body.extend(reply.body if isinstance(reply.body, list) else [reply.body])
                if not reply.flags & ofp.OFPMPF_REPLY_MORE:
                    return body
        result: list = self._exchange(run)
        return result
