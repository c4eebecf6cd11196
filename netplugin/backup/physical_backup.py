"""A physical backup job, on the backup host: the job's own container is the
RECEIVER (physical.py); once it listens, the runner asks the agent of the
server's host for the SENDER (physical_sender.py) and waits for both. The
stream is catalogued only when the file on disk has the sha256 and size the
sender streamed, decompresses whole, and the sender recorded mariadb-backup's
success, checkpoints and (with checksums) the tables at the backup point.

An incremental (``--incremental``) is taken against the target's newest
physical backup, full or incremental: its manifest's checkpoints go to the
sender (``--incremental-basedir``) and its name becomes the new backup's
parent, so the catalog keeps the chain.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

from ..errors import InvalidRequest, NetpluginError, NotFound
from . import jobscript, ondisk, physical, physical_chain, trust, verify
from . import manifest as manifests
from . import resources as lim
from .model import FAILED, RUNNING, JobEnded, backup_name
from .physical import SEND_FAILED, SENDER_ENDED, SENT, Sender
from .physical_jobs import PhysicalSteps

log = logging.getLogger(__name__)

SENDER_WAIT = 120.0        # seconds the runner waits for the sender's record after the receiver ended


class PhysicalBackup(PhysicalSteps):
    def __init__(self, runner):
        self.r = runner
        self.base: dict | None = None          # an incremental: its base's manifest

    # -- before the container ------------------------------------------------------------------
    def prepare(self, ctx) -> None:
        spec = ctx.spec
        self.r._prepare(ctx)                    # the runner's checks: image, network, profile, option file, disk
        if spec.compression != "zstd":
            raise JobEnded(FAILED, "a physical backup is compressed with zstd: leave --compression out")
        self.base = self._base(ctx) if spec.incremental else None
        ctx.limits.profile = ""                  # the profile bounds the sender, on the server's host
        params = {"ROLE": "receiver", "PARTIAL": "/backup/" + ctx.rel(ctx.ext + ".partial"),
                  "RECV_PORT": physical.RECV_PORT, "DIRECT": bool(ctx.limits.write_bps or ctx.limits.write_iops),
                  "WAIT": max(60, int(self.r.cfg.start_timeout))}
        for name, text in (("bin/job.sh", physical.RECEIVER), ("params", jobscript.params_text(params))):
            with open(os.path.join(ctx.job_dir, name), "w") as fh:
                fh.write(text)

    def _base(self, ctx) -> dict:
        """The newest physical backup of the target, with its manifest checked against the catalog."""
        try:
            base = trust.check_backup(physical_chain.newest_base(self.r.store.backups(ctx.job.target),
                                                                 ctx.job.target))
        except (NotFound, InvalidRequest) as exc:
            raise JobEnded(FAILED, exc.message) from None
        try:
            manifest = manifests.read(ctx.host(base.manifest_path))
        except (OSError, ValueError, InvalidRequest) as exc:
            raise JobEnded(FAILED, f"the base {base.name} of the incremental has no readable manifest: {exc}") \
                from None
        if manifest.get("sha256") != base.sha256 or not isinstance(manifest.get("checkpoints"), str):
            raise JobEnded(FAILED, f"the manifest of the base {base.name} does not match the catalog or has no "
                                   "checkpoints: take a full backup")
        try:
            physical.parse_checkpoints(manifest["checkpoints"])
        except InvalidRequest as exc:
            raise JobEnded(FAILED, f"the base {base.name}: {exc.message}") from None
        return manifest

    # -- the sender ------------------------------------------------------------------------------
    def started(self, ctx) -> None:
        spec, job = ctx.spec, ctx.job
        if not job.ip:
            raise JobEnded(FAILED, f"the receiver has no address on network {spec.network}")
        sender = physical.check_sender(Sender(
            job=job.id, host=spec.db_host_id, network=spec.network, db_host=spec.db_host, db_port=spec.db_port,
            database=spec.database, data_volume=spec.data_volume, option_file=spec.option_file,
            image=spec.image or self.r.cfg.image, recv_host=job.ip, limits=dict(spec.limits),
            checksums=spec.checksums, base_checkpoints=self.base["checkpoints"] if self.base else ""))
        self.r.store.request_sender(sender)
        self.r._record(ctx, result={"sender": {"host": spec.db_host_id, "state": physical.REQUESTED}})

    def watch(self, ctx) -> None:
        """A failed sender, or no agent to run it, ends the job; etcd not
        answering this once does not (the next wait asks again)."""
        try:
            s = self._sender(ctx)
            alive = s is None or s.state != physical.REQUESTED or self.r.store.agent_alive(s.host)
        except NetpluginError as exc:
            log.info("job %s: the sender's record not read this time: %s", ctx.job.id, exc.message)
            return
        if s is not None and s.state == SEND_FAILED:
            raise JobEnded(FAILED, f"the sender on host {s.host} failed: {s.message}")
        if s is not None and not alive:
            raise JobEnded(FAILED, f"no drctl agent is running on host {s.host}, which holds the server's data "
                                   "and runs the sender: start one there ('drctl agent') and submit again")

    def _sender(self, ctx) -> Sender | None:
        """The sender's record; a record that is not one ends the job, etcd not answering raises NetpluginError."""
        try:
            return self.r.store.get_sender(ctx.spec.db_host_id, ctx.job.id)
        except InvalidRequest as exc:
            raise JobEnded(FAILED, f"the sender's record cannot be trusted: {exc.message}") from None

    def ended(self, ctx, state: str) -> None:
        with contextlib.suppress(NetpluginError, ValueError):
            self.r.store.update_sender(ctx.spec.db_host_id, ctx.job.id, lambda s: setattr(s, "cancel", True))

    # -- verifying -------------------------------------------------------------------------------
    def _sent(self, ctx) -> Sender:
        deadline = time.monotonic() + SENDER_WAIT
        while True:
            try:
                s = self._sender(ctx)
            except NetpluginError as exc:
                if time.monotonic() > deadline:
                    raise JobEnded(FAILED, f"the sender's record cannot be read: {exc.message}") from None
                self.r.sleep(0.5)
                continue
            if s is None:
                raise JobEnded(FAILED, f"the sender's record on host {ctx.spec.db_host_id} is gone")
            if s.state in SENDER_ENDED:
                break
            if time.monotonic() > deadline:
                raise JobEnded(FAILED, f"the sender on host {s.host} did not end within {SENDER_WAIT:.0f} s of the "
                                       "receiver")
            self.r._check_stop(ctx, "waiting for the sender")
            self.r.sleep(0.5)
        if s.state != SENT:
            raise JobEnded(FAILED, f"the sender on host {s.host} {s.state}: {s.message}")
        return s

    def verify(self, ctx) -> dict:
        from .runner import _Outputs
        spec, job = ctx.spec, ctx.job
        if spec.incremental and self.base is None:       # adopted by a new agent: the base is still the newest
            self.base = self._base(ctx)
        s = self._sent(ctx)
        sent = s.outputs
        out = _Outputs(ctx.job_dir)
        verify.stages(out, "receiver")
        verify.stages(sent, "sender")
        partial_rel = ctx.rel(ctx.ext + ".partial")
        partial = ctx.host(partial_rel)
        try:
            size = os.path.getsize(partial)
        except OSError:
            raise JobEnded(FAILED, f"verification: {partial_rel} is missing") from None
        sha = verify.dump_file(out, size, self.r.cfg.min_size)
        sent_sha = (sent.get("sha256") or "").split()[:1]
        sent_bytes = (sent.get("bytes") or "").strip()
        if sent_sha != [sha] or sent_bytes != str(size):
            raise JobEnded(FAILED, f"verification: the receiver wrote {size} bytes with sha256 {sha}, the sender "
                                   f"streamed {sent_bytes or '?'} bytes with sha256 {sent_sha[0] if sent_sha else '?'}")
        ondisk.check_written(partial, partial_rel, "zstd", sha)
        try:
            checkpoints = sent.get("checkpoints") or ""
            lsn = physical.parse_checkpoints(checkpoints)
            binlog = physical.parse_binlog(sent.get("info") or "")
        except InvalidRequest as exc:
            raise JobEnded(FAILED, f"verification: {exc.message}") from None
        if self.base is not None and lsn["from_lsn"] != self.base["lsn"]["to_lsn"]:
            raise JobEnded(FAILED, f"verification: the incremental starts at LSN {lsn['from_lsn']}, its base "
                                   f"{self.base['name']} ends at {self.base['lsn']['to_lsn']}")
        if (self.base is None) != (lsn["backup_type"] == "full-backuped"):
            raise JobEnded(FAILED, f"verification: mariadb-backup made a {lsn['backup_type']} backup")
        when = (sent.get("point_time") or "").strip()
        if binlog is not None and when.isdigit() and (sent.get("in_block_commit") or "").strip() == "1":
            binlog["time"] = int(when)      # the source's clock while no commit could happen: the backup point
        tables, _lock = verify.snapshot_tables(sent, spec.checksums)
        point = physical.checksum_point(binlog, physical.parse_snapshot(sent.get("snapshot") or ""),
                                        (sent.get("in_block_commit") or "").strip() == "1")
        if tables and not point["exact"]:
            for t in tables.values():
                t["consistent"] = False
        name = backup_name(job.target, job.id)
        now = self.r.clock()
        base = manifests.build(job, spec, {"server_version": sent.get("server_version"), "raw_bytes": "0"},
                               name=name, file=ctx.rel(ctx.ext), size=size, sha256=sha, tables=tables, lock={},
                               stages={"receiver": verify.stages(out, "receiver"),
                                       "sender": verify.stages(sent, "sender")},
                               created=job.entered(RUNNING) or job.created, finished=now,
                               image=spec.image or self.r.cfg.image)
        parent = self.base["name"] if self.base else ""
        chain = [*(self.base.get("chain") or [self.base["name"]]), name] if self.base else [name]
        manifest = manifests.physical(base, checkpoints=checkpoints, lsn=lsn, binlog=binlog, parent=parent,
                                      chain=chain, point=point, tool=(sent.get("backup_command") or "").strip(),
                                      tool_version=(sent.get("backup_version") or "").strip())
        manifest["source"]["data_volume"] = spec.data_volume
        manifest["source"]["host_id"] = spec.db_host_id
        ondisk.publish(partial, ctx.host(ctx.rel(ctx.ext)), ctx.host(ctx.rel(".manifest.json")), manifest,
                       spec.volume)
        self.r.store.add_backup(manifests.catalog_record(manifest, job.target, spec.volume,
                                                         ctx.rel(".manifest.json"), job.host))
        with contextlib.suppress(NetpluginError):
            self.r.store.remove_sender(spec.db_host_id, job.id)
        result = dict(manifests.summary(manifest), method="physical", parent=parent, lsn=lsn, binlog=binlog,
                      checksums_exact=point["exact"])
        started = job.entered(RUNNING)
        if started:
            result["seconds"] = round(now - started, 3)
        kind = f"incremental on {parent}" if parent else "full"
        note = "" if point["exact"] or not tables else \
            " (WARNING: the checksums are not at the backup point: a restore cannot verify them)"
        result["message"] = (f"physical backup {name} ({kind}): {lim.human_bytes(size)}, LSN {lsn['from_lsn']}-"
                             f"{lsn['to_lsn']}, {len(tables)} tables, {manifest['rows']} rows{note}")
        return result
