"""The sending side of physical backups, run by the agent of the host that
holds the database server's data (``drctl run --method physical
--db-host-id HOST``).

The backup job's runner, on the backup host, starts its receiver and then
asks for a sender (``backup/senders/<host>/<job>``, physical.Sender). Each
agent passes over its own host's requests every ``schedule_poll``: a request
is claimed by one guarded update (requested -> sending), checked as a job
record is (names, image, option file), and run in a thread: a container of
the tools image that mounts the server's data volume read-only, joins the
job's network with the job's bandwidth profile on its port, and runs
physical.SENDER once its limits are read back. Its outputs (exit status,
sha256 and bytes of the stream, checkpoints, binlog info, checksums) go back
into the record, which the runner reads. A record the runner marked
``cancel`` stops the container; the record is removed once ended and cancelled.

A sender still ``sending`` that this agent did not start was started by a
previous agent of this host, killed since (agents/<host> is held by one live
agent at a time): the new agent adopts it. If its container was let go (its
gate is open, so its limits had been read back), the agent follows it to its
end and records that, as if it had started it; a container never let go is
removed, and one that is gone fails the sender, saying so. Either way no
sender container outlives its record's end.

The sender holds no slot of its host: the backup job holds its slot on the
backup host and the lock of the server, so no second job reads the server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import threading
import time

from ..errors import InvalidRequest, NetpluginError
from . import jobscript, physical, trust
from . import resources as lim
from .config import BackupConfig
from .containers import Containers, is_not_found
from .hostenv import HostEnv
from .model import Limits
from .physical import SEND_CANCELLED, SEND_FAILED, SENDER_ENDED, SENDING, SENT, Sender
from .store import BackupStore

log = logging.getLogger(__name__)

LABEL_SENDER = "netplugin.backup.sender"
OUTPUTS = ("status", "sha256", "bytes", "checkpoints", "info", "snapshot", "in_block_commit", "point_time", "checksums",
           "server_version", "backup_version", "backup_command", "error", "done")
MAX_OUTPUT = 512 * 1024        # bytes of outputs kept in the record (etcd values stay small)


def read_outputs(folder: str) -> dict[str, str]:
    """The sender script's small output files, never through a symlink."""
    out: dict[str, str] = {}
    total = 0
    for name in OUTPUTS:
        try:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        with os.fdopen(fd, "rb") as fh:
            text = fh.read(MAX_OUTPUT - total).decode(errors="replace")
        total += len(text)
        out[name] = text
    return out


class Senders:
    """This host's senders: the agent's pass (``tick``) and the threads it starts."""

    def __init__(self, store: BackupStore, docker, cfg: BackupConfig, host: str, np_store=None,
                 env: HostEnv | None = None, clock=time.time, sleep=time.sleep):
        self.store = store
        self.client = docker
        self.docker = Containers(docker)
        self.cfg = cfg
        self.host = host
        self.np_store = np_store
        self.env = env or HostEnv()
        self.clock = clock
        self.sleep = sleep
        self.threads: dict[str, threading.Thread] = {}

    def tick(self, now: float) -> list[str]:
        """Start every requested sender of this host, adopt the ones a killed
        agent of this host left sending; drop the records of cancelled ones that ended."""
        started = []
        for sender, _rev in self.store.senders(self.host):
            running = self.threads.get(sender.job)
            if sender.state in SENDER_ENDED or (sender.cancel and sender.state == physical.REQUESTED):
                if sender.cancel and not (running and running.is_alive()):
                    with contextlib.suppress(NetpluginError):
                        self.store.remove_sender(self.host, sender.job)
                continue
            if sender.state == SENDING and sender.job not in self.threads:
                t = threading.Thread(target=self.adopt, args=(sender,), name=f"send-{sender.job}", daemon=True)
                self.threads[sender.job] = t
                t.start()
                continue
            if sender.state != physical.REQUESTED or (running and running.is_alive()):
                continue
            try:
                claimed = self.store.update_sender(self.host, sender.job, self._claim)
            except NetpluginError as exc:
                log.info("sender of %s not claimed: %s", sender.job, exc.message)
                continue
            t = threading.Thread(target=self.run, args=(claimed,), name=f"send-{sender.job}", daemon=True)
            self.threads[sender.job] = t
            t.start()
            started.append(sender.job)
        return started

    @staticmethod
    def _claim(s: Sender) -> None:
        if s.state != physical.REQUESTED or s.cancel:
            raise InvalidRequest(f"sender of {s.job} is {s.state}")
        s.state = SENDING

    def join(self, timeout: float | None = None) -> None:
        for t in list(self.threads.values()):
            t.join(timeout)

    # -- one sender ---------------------------------------------------------------------------
    def run(self, s: Sender) -> None:
        """Run the sender container to its end; record what it said."""
        self._follow(s, lambda: self._start(s))

    def adopt(self, s: Sender) -> None:
        """Follow to its end a sender a killed agent of this host left sending."""
        log.info("sender of %s: adopting it from this host's previous agent", s.job)
        self._follow(s, lambda: self._adopted(s))

    def _adopted(self, s: Sender) -> str:
        """The adopted sender's container, once it is known to have been let go."""
        info = None
        if s.container:
            try:
                info = self.docker.inspect(s.container)
            except Exception as exc:
                if not is_not_found(exc):
                    raise
        if info is None:
            raise InvalidRequest(f"the agent of host {self.host} stopped while the sender ran, and its container "
                                 "is gone: run the backup again")
        if not os.path.exists(os.path.join(self._folder(s), "go")):
            with contextlib.suppress(Exception):
                self.docker.stop(s.container)
                self.client.remove_container(s.container, force=True)
            raise InvalidRequest(f"the agent of host {self.host} stopped before the sender was let go: "
                                 "run the backup again")
        return s.container

    def _follow(self, s: Sender, container) -> None:
        """Wait for the sender's container (``container()`` starts or finds it)
        to end, record what it said, and remove it."""
        cid = ""
        try:
            cid = container()
            code = self._wait(s, cid)
            outputs = read_outputs(os.path.join(self._folder(s), "out"))
            tail = "\n".join(self.docker.log_tail(cid, 20))[-4000:]
            if code == 0 and (outputs.get("done") or "").strip() == "ok":
                self._end(s, SENT, "sent", container=cid, outputs=outputs)
            else:
                why = (outputs.get("error") or "").strip() or (tail.splitlines()[-1:] or ["no message"])[0]
                self._end(s, SEND_FAILED, f"the sender exited with code {code}: {why}", container=cid,
                          outputs=outputs)
        except _Cancelled:
            self._end(s, SEND_CANCELLED, "cancelled by the backup job", container=cid)
        except NetpluginError as exc:
            self._end(s, SEND_FAILED, exc.message, container=cid)
        except Exception as exc:  # Docker's own errors end the sender with a message
            log.exception("sender of %s failed", s.job)
            self._end(s, SEND_FAILED, f"{type(exc).__name__}: {exc}", container=cid)
        finally:
            if cid:
                with contextlib.suppress(Exception):
                    self.docker.stop(cid)
                    self.client.remove_container(cid, force=True)

    def _folder(self, s: Sender) -> str:
        return trust.child(self.cfg.work_dir, f"{s.job}-send")

    def _end(self, s: Sender, state: str, message: str, **fields) -> None:
        def change(rec: Sender) -> None:
            rec.state, rec.message = state, message[:2000]
            for k, v in fields.items():
                setattr(rec, k, v)
        try:
            self.store.update_sender(self.host, s.job, change)
        except NetpluginError as exc:
            log.warning("sender of %s: %s, but not recorded: %s", s.job, message, exc.message)
        log.info("sender of %s: %s: %s", s.job, state, message)

    def _start(self, s: Sender) -> str:
        trust.check_image(s.image, self.cfg)
        cnf = trust.option_file(s.option_file, self.cfg)
        st = os.stat(cnf)
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077:
            raise InvalidRequest(f"option file {s.option_file} must be a regular file of mode 600")
        vol = self.docker.volume(s.data_volume)
        if vol is None:
            raise InvalidRequest(f"data volume {s.data_volume} does not exist on host {self.host}: name the volume "
                                 "that holds the server's /var/lib/mysql")
        limits = Limits.from_dict(s.limits)
        profile, limits.profile = limits.profile, ""
        limits.read_bps = limits.write_bps = limits.read_iops = limits.write_iops = None
        folder = self._folder(s)
        if os.path.exists(folder):
            shutil.rmtree(folder)
        for sub in ("bin", "out", "base"):
            os.makedirs(os.path.join(folder, sub), mode=0o700)
        params = {"ROLE": "sender", "DB_HOST": s.db_host, "DB_PORT": s.db_port, "DATABASE": s.database,
                  "RECV_HOST": s.recv_host, "RECV_PORT": s.recv_port, "CHECKSUMS": s.checksums,
                  "INCREMENTAL": bool(s.base_checkpoints), "PARALLEL": 2, "DATA": physical.DATA_MOUNT}
        files = [("bin/job.sh", physical.SENDER), ("bin/checksum-gen.sql", jobscript.CHECKSUM_GEN_SQL),
                 ("params", jobscript.params_text(params))]
        if s.base_checkpoints:
            files.append(("base/xtrabackup_checkpoints", s.base_checkpoints))
        for name, text in files:
            with open(os.open(os.path.join(folder, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                              0o600), "w") as fh:
                fh.write(text)
        mounts = [{"Type": "volume", "Source": s.data_volume, "Target": physical.DATA_MOUNT, "ReadOnly": True},
                  {"Type": "bind", "Source": folder, "Target": "/job", "ReadOnly": False},
                  {"Type": "bind", "Source": cnf, "Target": "/run/drctl/client.cnf", "ReadOnly": True}]
        cid, warnings = self.docker.create(
            s.image, name=f"drctl-{s.job}-send", command=["/bin/bash", "/job/bin/job.sh"],
            labels={LABEL_SENDER: s.job}, mounts=mounts, network=s.network, ip=None,
            limits=lim.host_config_kwargs(limits, None), working_dir="/job", environment={"DRCTL_JOB": s.job},
            cap_add=["DAC_READ_SEARCH"])        # read the server's files, whoever owns them (mounted read-only)
        self.store.update_sender(self.host, s.job, lambda rec: setattr(rec, "container", cid))
        problems = lim.limit_warnings(warnings) + lim.check_inspect(
            self.docker.inspect(cid).get("HostConfig") or {}, limits, None)
        if problems:
            raise InvalidRequest("strict mode: Docker did not apply every limit of the sender: "
                                 + "; ".join(problems))
        self.docker.start(cid)
        info = self.docker.inspect(cid)
        net = (info.get("NetworkSettings", {}).get("Networks") or {}).get(s.network) or {}
        if profile:
            self._profile(s, net.get("EndpointID", ""), profile)
        pid = info["State"].get("Pid") or 0
        cg = lim.check_applied(self.env.applied(pid, None), limits, self.env.swap()) if pid else ["not running"]
        if cg:
            raise InvalidRequest("strict mode: the kernel does not enforce every limit of the sender: "
                                 + "; ".join(cg))
        with open(os.open(os.path.join(folder, "go"), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600), "w") as fh:
            fh.write(str(self.clock()))
        return cid

    def _profile(self, s: Sender, endpoint: str, profile: str) -> None:
        """The job's bandwidth profile on the sender's port, enforced by the switch before any byte moves."""
        if self.np_store is None or not endpoint:
            raise InvalidRequest(f"bandwidth profile {profile} cannot be set: no netplugin endpoint for the sender")
        ep = self.np_store.change_endpoint(endpoint, lambda e: setattr(e, "limit", {"profile": profile}))
        prof = self.np_store.list_profiles().get(profile)
        bridge = next((h.bridge for h, _alive in self.np_store.list_hosts() if h.host == ep.host), "")
        deadline = time.monotonic() + self.cfg.profile_wait
        while time.monotonic() < deadline:
            got = self.env.meter(bridge, ep.port) if bridge else None
            if got and prof and got[0] == prof.rate_kbps:
                return
            self.sleep(0.2)
        raise InvalidRequest(f"bandwidth profile {profile} is not enforced on the sender's port {ep.port} after "
                             f"{self.cfg.profile_wait:.0f} s: is netplugin running on host {self.host}?")

    def _wait(self, s: Sender, cid: str) -> int:
        while True:
            code = self.docker.wait(cid, timeout=2.0)
            if code is not None:
                return code
            rec = self.store.get_sender(self.host, s.job)
            if rec is None or rec.cancel:
                raise _Cancelled()


class _Cancelled(Exception):
    """The backup job asked its sender to stop."""
