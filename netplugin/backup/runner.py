"""Runs one admitted job to its end: create the container with its limits,
attach to its logs, start it, check every limit, open the gate, wait, verify,
record. Never ``auto_remove``: the exit code, the OOM flag and the logs are read
from the stopped container, which stays until ``drctl rm`` or the agent's
clean-up after ``keep_containers``.

File handling happens on the host, in the volume's folder (Docker's
``Mountpoint``; the agent runs as root on the Docker host): the dump is written
as ``<name><ext>.partial`` and renamed by the runner only after every check
passed, the manifest first; a job that ends any other way has its partial
files removed here, even when its container was killed mid-write.

The checks themselves are verify.py's, the manifest is manifest.py's, Docker
is reached through containers.Containers and the host through hostenv.HostEnv:
this module is the job's state machine.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import asdict

from ..errors import Conflict, InvalidRequest, NetpluginError
from . import jobscript, ondisk, physical_jobs, retention, trust, verify
from . import manifest as manifests
from . import resources as lim
from .config import BackupConfig
from .containers import Containers, docker_message, is_docker_error, is_not_found
from .hostenv import HostEnv
from .jobs import resolve_server
from .model import (
    BACKUP,
    CANCELLED,
    COMPRESSIONS,
    EXPIRED,
    FAILED,
    MAX_START_ATTEMPTS,
    RESTORE,
    RUNNING,
    STARTING,
    SUCCEEDED,
    TERMINAL,
    VERIFYING,
    Backup,
    Job,
    JobEnded,
    JobSpec,
    Limits,
    backup_name,
)
from .store import BackupStore
from .trust import PHYSICAL_EXT

log = logging.getLogger(__name__)

LABEL_JOB = "netplugin.backup.job"
LABEL_KIND = "netplugin.backup.kind"
LABEL_TARGET = "netplugin.backup.target"
MOUNT_BACKUP, MOUNT_JOB, MOUNT_CNF = "/backup", "/job", "/run/drctl/client.cnf"


def _open(path: str, flags: int, mode: str):
    """A file of the job folder, never through a symlink (the container writes
    in that folder: a link it planted must not lead the agent out of it)."""
    return open(os.open(path, flags | os.O_NOFOLLOW, 0o600), mode)


class _Outputs:
    """The files the job script wrote in the job's ``out`` folder, read when asked."""

    def __init__(self, job_dir: str):
        self.folder = os.path.join(job_dir, "out")

    def get(self, name: str, /) -> str | None:
        try:
            with _open(os.path.join(self.folder, name), os.O_RDONLY, "r") as fh:
                return fh.read()
        except OSError:
            return None


class _Ctx:
    def __init__(self, job: Job):
        self.job = job
        self.spec: JobSpec = job.job_spec
        self.limits = Limits.from_dict(self.spec.limits)
        self.volume_path = ""
        self.device: lim.BlockDevice | None = None
        self.job_dir = ""
        self.option_file = ""
        self.container = job.container
        self.manifest: dict | None = None
        self.backup: Backup | None = None
        self.log_lines: collections.deque = collections.deque(maxlen=200)
        self.attach_thread: threading.Thread | None = None
        self.exit_code: int | None = None
        self.oom: bool | None = None
        self.gate_open = False
        self.physical: physical_jobs.PhysicalSteps | None = None    # a physical job's steps, None: logical
        self.extra_mounts: list[dict] = []    # more mounts of the job container (a physical restore's data volume)

    # paths, inside the volume (relative) and on the host
    @property
    def ext(self) -> str:
        return PHYSICAL_EXT if self.spec.method == "physical" else COMPRESSIONS[self.spec.compression]

    def rel(self, suffix: str = "") -> str:
        return f"{self.job.target}/{backup_name(self.job.target, self.job.id)}{suffix}"

    def host(self, rel: str) -> str:
        """rel inside the volume's folder, resolved; raises InvalidRequest when it leads out."""
        return trust.inside(self.volume_path, rel, what="file in the volume")


def _docker_message(exc: Exception) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    return text.decode() if isinstance(text, bytes) else str(text)


def _is_not_found(exc: Exception) -> bool:
    return type(exc).__name__ == "NotFound" or getattr(getattr(exc, "response", None), "status_code", 0) == 404


def _is_timeout(exc: Exception) -> bool:
    names = {type(e).__name__ for e in (exc, exc.__cause__, exc.__context__) if e is not None}
    return bool(names & {"ReadTimeout", "ReadTimeoutError", "ConnectionError", "Timeout", "TimeoutError",
                         "timeout"}) or "timed out" in str(exc).lower()


class Runner:
    def __init__(self, store: BackupStore, docker, cfg: BackupConfig, env: HostEnv | None = None,
                 np_store=None, clock=time.time, sleep=time.sleep):
        self.store = store
        self.docker = Containers(docker)   # docker: docker.APIClient (or a fake with the same methods)
        self.cfg = cfg
        self.env = env or HostEnv()
        self.np_store = np_store      # netplugin's Store: endpoints and profiles
        self.clock = clock
        self.sleep = sleep

    # -- state changes ------------------------------------------------------------------
    def _update(self, ctx: _Ctx, change) -> Job:
        ctx.job = self.store.update(ctx.job.id, change)
        return ctx.job

    def _record(self, ctx: _Ctx, **fields) -> Job:
        """Write fields of the job, its state unchanged."""
        def change(j: Job):
            for k, v in fields.items():
                setattr(j, k, v)
        return self._update(ctx, change)

    def _move(self, ctx: _Ctx, state: str, message: str = "", **fields) -> Job:
        def change(j: Job):
            for k, v in fields.items():
                setattr(j, k, v)
            j.move(state, message, now=self.clock())
        return self._update(ctx, change)

    def _check_stop(self, ctx: _Ctx, phase: str) -> None:
        """Raise JobEnded when the job was cancelled or a deadline passed."""
        found = self.store.get(ctx.job.id)
        if found and found[0].cancel_requested:
            raise JobEnded(CANCELLED, f"cancelled by {found[0].cancel_requested} while {phase}")
        now = self.clock()
        if ctx.job.state == STARTING and ctx.job.start_by and now > ctx.job.start_by:
            raise JobEnded(EXPIRED, f"not running within its start deadline ({ctx.spec.start_timeout:.0f} s) "
                                    f"while {phase}")
        if ctx.job.run_by and now > ctx.job.run_by:
            raise JobEnded(EXPIRED, f"not finished within its deadline ({ctx.spec.timeout:.0f} s) while {phase}")

    # -- the whole job --------------------------------------------------------------------
    def _refuse(self, job: Job) -> Job | None:
        """job re-checked as the CLI checks it (trust.check_job); a record that
        fails is marked failed with the reason and nothing of it is touched."""
        try:
            trust.check_job(job, self.cfg)
            return None
        except InvalidRequest as exc:
            why = exc.message
        log.warning("job %r: record refused: %s", str(job.id)[:80], why)
        try:
            return self.store.update(job.id, lambda j: j.refuse(why, self.clock()))
        except NetpluginError as exc:
            log.warning("job %r: cannot mark the refused record failed: %s", str(job.id)[:80], exc.message)
            return job

    def run(self, job: Job) -> Job:
        """job was admitted (starting). Returns the job in its final state."""
        refused = self._refuse(job)
        if refused is not None:
            return refused

        def steps(ctx: _Ctx) -> None:
            ctx.physical = physical_jobs.for_job(self, ctx)
            (ctx.physical.prepare if ctx.physical else self._prepare)(ctx)
            self._create_and_start(ctx)
            if ctx.physical:
                ctx.physical.started(ctx)
            self._wait(ctx)
            self._finish(ctx)

        def unexpected(exc: Exception) -> str:
            if is_docker_error(exc):
                return f"Docker refused: {docker_message(exc)}"
            log.exception("job %s: unexpected error", job.id)
            return f"internal error in the runner: {type(exc).__name__}: {exc}"
        return self._to_the_end(_Ctx(job), steps, unexpected)

    def adopt(self, job: Job) -> Job:
        """Carry on with an active job whose agent died (this host's new agent)."""
        refused = self._refuse(job)
        if refused is not None:
            return refused
        exhausted = ""
        # Logical jobs only: a physical job's start leaves what a retry would trip on
        # (a sender asked of another host, a restore's fresh data volume).
        if job.state == STARTING and job.job_spec.method != "physical":
            retried = self._retry_start(job)
            if isinstance(retried, Job):
                return retried
            exhausted = retried or ""

        def steps(ctx: _Ctx) -> None:
            self._locate(ctx)
            ctx.physical = physical_jobs.for_job(self, ctx)
            if exhausted:
                raise JobEnded(FAILED, exhausted)
            if job.state == STARTING:
                raise JobEnded(FAILED, "the agent stopped while the job was starting, and it cannot be proven "
                                       "that nothing ran (its container had started, or the job is physical): "
                                       "submit it again")
            try:
                info = self.docker.inspect(ctx.container)
            except Exception as exc:  # Docker's own error types; only NotFound is an answer
                if is_not_found(exc):
                    raise JobEnded(FAILED, f"its container {ctx.container[:12]} is gone") from None
                raise
            ctx.gate_open = True
            if job.state == RUNNING and info["State"].get("Running"):
                log.info("job %s: adopted, container still running", job.id)
                self._wait(ctx)
            self._finish(ctx)

        def unexpected(exc: Exception) -> str:
            log.exception("job %s: adopting failed", job.id)
            return f"adopting the job failed: {type(exc).__name__}: {exc}"
        return self._to_the_end(_Ctx(job), steps, unexpected)

    # -- a start the agent's stop interrupted -----------------------------------------------
    def _never_started(self, job: Job) -> str | None:
        """Proof that the interrupted attempt ran nothing: returns the id of its
        leftover container to remove ("" when there is none), or None when it
        cannot be proven. The container is looked up by its recorded id, else by
        the name the runner gives it (the agent may have stopped between create
        and recording the id). Only a container that never started proves it:
        Docker says State.StartedAt is the zero time, it does not run, has no
        pid. Once the container started, the job script ran: it waits at the
        gate, but nothing here can tell how far a killed script got (the gate is
        this host's file, written at running), so such a job fails as before."""
        name = f"drctl-{job.id}"
        try:
            info = self.docker.inspect(job.container or name)
        except Exception as exc:  # noqa: BLE001 - Docker's own error types; only NotFound proves absence
            if is_not_found(exc):
                return ""
            log.warning("job %s: cannot inspect its container: %s", job.id, exc)
            return None
        labels = (info.get("Config") or {}).get("Labels") or {}
        state = info.get("State") or {}
        if labels.get(LABEL_JOB) != job.id:
            log.warning("job %s: container %s is not this job's: left alone", job.id, str(info.get("Id"))[:12])
            return None
        started = str(state.get("StartedAt") or "")
        if not started.startswith("0001-01-01") or state.get("Running") or state.get("Pid"):
            return None
        return str(info.get("Id") or job.container or name)

    def _retry_start(self, job: Job) -> Job | str | None:
        """A job the agent's stop caught while starting: when nothing ran,
        remove the attempt's leftover container (a retry creates one of the same
        name) and put the job back in its host's queue, freeing its slot and
        lock (store.requeue, one transaction); the job as queued. After
        MAX_START_ATTEMPTS such attempts: the message to fail it with. None:
        its container started, the job fails as any interrupted start did."""
        leftover = self._never_started(job)
        if leftover is None:
            return None
        if leftover:
            try:
                self.docker.client.remove_container(leftover, v=False, force=True)
            except Exception as exc:  # noqa: BLE001 - a container left would collide: no retry then
                if not is_not_found(exc):
                    log.warning("job %s: cannot remove its unstarted container: %s", job.id, exc)
                    return None
            log.info("job %s: removed the unstarted container %s of the interrupted attempt", job.id, leftover[:12])
        for _ in range(4):
            found = self.store.get(job.id)
            if found is None or found[0].state != STARTING:
                return found[0] if found else job
            current, rev = found
            attempt = current.interrupted_starts() + 1
            if attempt >= MAX_START_ATTEMPTS:
                return (f"the agent stopped while the job was starting {attempt} times (nothing ran; at most "
                        f"{MAX_START_ATTEMPTS} attempts): find why the agent stops, then submit it again")
            current.start_attempts = attempt
            current.container, current.container_name = "", ""
            if self.store.requeue(current, rev, self.clock(),
                                  f"attempt {attempt} of {MAX_START_ATTEMPTS} interrupted while starting (the agent "
                                  "stopped; nothing ran): queued again"):
                log.info("job %s: queued again after interrupted attempt %s", job.id, attempt)
                return current
        return "the job's record kept changing while it was being queued again after an interrupted start: " \
               "submit it again"

    def _to_the_end(self, ctx: _Ctx, steps: Callable[[_Ctx], None], unexpected: Callable[[Exception], str]) -> Job:
        """Run steps; however they stop, end the job with a state and a message."""
        try:
            steps(ctx)
        except JobEnded as end:
            self._end(ctx, end.state, end.message)
        except NetpluginError as exc:
            self._end(ctx, FAILED, exc.message)
        except Exception as exc:  # noqa: BLE001 - every failure ends the job with a message
            self._end(ctx, FAILED, unexpected(exc))
        return ctx.job

    # -- preparing --------------------------------------------------------------------------
    def _locate(self, ctx: _Ctx) -> None:
        spec = ctx.spec
        ctx.job_dir = trust.child(self.cfg.work_dir, ctx.job.id)
        vol = self.docker.volume(spec.volume)
        if vol is None:
            if ctx.job.kind == RESTORE:
                raise JobEnded(FAILED, f"volume {spec.volume} does not exist on host {ctx.job.host}")
            vol = self.docker.create_volume(spec.volume)
        if vol.get("Driver") != "local":
            raise JobEnded(FAILED, f"volume {spec.volume} uses driver {vol.get('Driver')}: drctl needs a 'local' "
                                   "volume, whose folder it can check and rename in")
        ctx.volume_path = trust.volume_folder(vol.get("Mountpoint"))
        target = os.path.join(ctx.volume_path, ctx.job.target)
        if os.path.islink(target):
            raise JobEnded(FAILED, f"folder {ctx.job.target} of volume {spec.volume} is a symlink "
                                   f"(to {os.readlink(target)[:200]}): refused, nothing was written")
        ctx.host(ctx.job.target)

    def _check_option_file(self, ctx: _Ctx) -> None:
        """The job's option file, resolved inside the allowed folder: a regular
        file only its owner reads (it holds a password)."""
        spec, job = ctx.spec, ctx.job
        ctx.option_file = trust.option_file(spec.option_file, self.cfg)
        try:
            st = os.stat(ctx.option_file)
        except OSError as exc:
            raise JobEnded(FAILED, f"option file {spec.option_file} cannot be read on host {job.host}: "
                                   f"{exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise JobEnded(FAILED, f"option file {spec.option_file} is not a regular file")
        if st.st_mode & 0o077:
            raise JobEnded(FAILED, f"option file {spec.option_file} is readable by others (mode "
                                   f"{stat.S_IMODE(st.st_mode):o}): it holds a password; chmod 600 it")

    def _prepare(self, ctx: _Ctx) -> None:
        spec, job = ctx.spec, ctx.job
        self._locate(ctx)
        image = spec.image or self.cfg.image
        if not self.docker.has_image(image):
            raise JobEnded(FAILED, f"image {image} is not on host {job.host}: build it with "
                                   "scripts/make-db-images.sh")
        if not self.docker.has_network(spec.network):
            raise JobEnded(FAILED, f"network {spec.network} does not exist on host {job.host}: create it "
                                   "with 'docker network create -d netplugin ...'")
        if ctx.limits.profile:
            if self.np_store is None:
                raise JobEnded(FAILED, "a bandwidth profile was asked but netplugin's store is not available")
            if ctx.limits.profile not in self.np_store.list_profiles():
                raise JobEnded(FAILED, f"bandwidth profile {ctx.limits.profile!r} does not exist: create it with "
                                       "'netctl profile create'")
        self._check_option_file(ctx)
        if ctx.limits.disk_limited():
            try:
                ctx.device = self.env.device(ctx.volume_path)
            except InvalidRequest as exc:
                raise JobEnded(FAILED, f"disk limits cannot be applied: {exc.message}") from None
        params = {"DB_HOST": spec.db_host, "DB_PORT": spec.db_port, "DATABASE": spec.database,
                  "COMPRESSION": spec.compression, "CHECKSUMS": spec.checksums}
        if job.kind == BACKUP:
            params["PARTIAL"] = f"{MOUNT_BACKUP}/{ctx.rel(ctx.ext + '.partial')}"
            params["DIRECT"] = bool(ctx.limits.write_bps or ctx.limits.write_iops)
            params["LOCK_TIMEOUT"] = max(1, int(self.cfg.lock_timeout))
        else:
            ctx.manifest = self._load_manifest(ctx)
            self._check_not_source(ctx, ctx.manifest)
            stage, old = jobscript.staging_names(spec.database, job.id)
            params.update(REL=ctx.manifest["file"], SIZE=ctx.manifest["size"], SHA256=ctx.manifest["sha256"],
                          REPLACE=spec.replace, COMPRESSION=ctx.manifest["compression"],
                          DIRECT=bool(ctx.limits.read_bps or ctx.limits.read_iops),
                          CHECKSUMS=spec.checksums and bool(ctx.manifest.get("tables")), STAGE=stage, OLD=old)
            if spec.replay:
                from .pitr import replay_files
                try:
                    more, replay_argv = replay_files(self.store, spec, ctx.manifest, ctx.host)
                except InvalidRequest as exc:
                    raise JobEnded(FAILED, f"point-in-time replay refused: {exc.message}") from None
                params.update(more)
        if os.path.exists(ctx.job_dir):
            shutil.rmtree(ctx.job_dir)
        os.makedirs(os.path.join(ctx.job_dir, "bin"), mode=0o700)
        os.makedirs(os.path.join(ctx.job_dir, "out"), mode=0o700)
        files = [("bin/job.sh", jobscript.SCRIPT), ("bin/checksum-gen.sql", jobscript.CHECKSUM_GEN_SQL),
                 ("params", jobscript.params_text(params))]
        if ctx.manifest is not None:
            tables, sums = jobscript.expected_files(ctx.manifest)
            files += [("expected_tables", tables), ("expected_checksums", sums)]
        if job.kind == RESTORE and spec.replay:
            files.append(("replay.argv", replay_argv))
        for name, text in files:
            with open(os.path.join(ctx.job_dir, name), "w") as fh:
                fh.write(text)

    @staticmethod
    def _restore_note(ctx: _Ctx) -> str:
        """What a --replace restore killed before its script could say may leave."""
        if ctx.job.kind != RESTORE or not ctx.spec.replace:
            return ""
        try:
            stage, old = jobscript.staging_names(ctx.spec.database, ctx.job.id)
        except (ValueError, NetpluginError):
            return ""
        return (f"; the job was stopped before it could clean up: the live schema {ctx.spec.database} is "
                f"unchanged unless the log says it was swapped, and schemas {stage} or {old} may be left "
                "on the server: drop them")

    def _check_not_source(self, ctx: _Ctx, manifest: dict) -> None:
        """A restore into the very server its backup was read from (the same
        server key: network, address, port) needs ``--into-source``."""
        spec = ctx.spec
        source = manifest.get("source") if isinstance(manifest.get("source"), dict) else {}
        if spec.into_source is True or not source:
            return
        try:
            key = resolve_server(str(source.get("network", "")), str(source.get("host", "")),
                                 int(source.get("port", 0)))
        except (TypeError, ValueError):
            return
        if key in (ctx.job.server, resolve_server(spec.network, spec.db_host, spec.db_port)):
            raise JobEnded(FAILED, f"backup {manifest.get('name')} was taken from this very server "
                                   f"({spec.db_host}:{spec.db_port}): restoring into it needs --into-source "
                                   "(nothing was changed)")

    def _load_manifest(self, ctx: _Ctx) -> dict:
        """The manifest of the backup to restore, from the volume, checked against the catalog."""
        spec = ctx.spec
        backup = trust.check_backup(self.store.find_backup(spec.backup))
        ctx.backup = backup
        try:
            manifest = manifests.read(ctx.host(backup.manifest_path))
        except (OSError, ValueError) as exc:
            raise JobEnded(FAILED, f"manifest {backup.manifest_path} of backup {backup.name} cannot be read "
                                   f"in volume {spec.volume}: {exc}") from None
        if manifest.get("sha256") != backup.sha256 or manifest.get("size") != backup.size \
                or manifest.get("file") != backup.path:
            raise JobEnded(FAILED, f"manifest of backup {backup.name} does not match the catalog (sha256 or size): "
                                   "the volume holds another or a damaged backup")
        return manifest

    # -- container ------------------------------------------------------------------------
    def _create_and_start(self, ctx: _Ctx) -> None:
        spec, job, limits = ctx.spec, ctx.job, ctx.limits
        d = self.docker
        self._check_stop(ctx, "preparing")
        mounts = [
            {"Type": "volume", "Source": spec.volume, "Target": MOUNT_BACKUP, "ReadOnly": job.kind == RESTORE},
            {"Type": "bind", "Source": ctx.job_dir, "Target": MOUNT_JOB, "ReadOnly": False},
            {"Type": "bind", "Source": ctx.option_file, "Target": MOUNT_CNF, "ReadOnly": True},
            *ctx.extra_mounts,
        ]
        labels = {**{str(k): str(v) for k, v in spec.labels.items()},
                  LABEL_JOB: job.id, LABEL_KIND: job.kind, LABEL_TARGET: job.target}
        name = f"drctl-{job.id}"
        ctx.container, warnings = d.create(
            spec.image or self.cfg.image, name=name, command=["/bin/bash", f"{MOUNT_JOB}/bin/job.sh", job.kind],
            labels=labels, mounts=mounts, network=spec.network, ip=spec.ip,
            limits=lim.host_config_kwargs(limits, ctx.device), working_dir=MOUNT_JOB,
            environment={"DRCTL_JOB": job.id})
        self._record(ctx, container=ctx.container, container_name=name)
        dropped = lim.limit_warnings(warnings)
        info = d.inspect(ctx.container)
        problems = lim.check_inspect(info.get("HostConfig") or {}, limits, ctx.device)
        report: dict = {"requested": asdict(limits), "device": asdict(ctx.device) if ctx.device else None,
                        "docker_warnings": warnings}
        if (dropped or problems) and spec.strict:
            raise JobEnded(FAILED, "strict mode: Docker did not apply every limit: "
                           + "; ".join(dropped + problems) + " (the job did not start)")
        report["problems"] = dropped + problems
        self._attach(ctx)
        d.start(ctx.container)
        info = d.inspect(ctx.container)
        net = (info.get("NetworkSettings", {}).get("Networks") or {}).get(spec.network) or {}
        endpoint, ip, pid = net.get("EndpointID", ""), net.get("IPAddress", ""), info["State"].get("Pid") or 0
        self._record(ctx, endpoint=endpoint, ip=ip)
        if limits.profile:
            report["profile"] = self._apply_profile(ctx, endpoint, limits.profile)
        if not info["State"].get("Running") or not pid:
            raise JobEnded(FAILED, f"the container stopped at once (exit code {info['State'].get('ExitCode')})")
        applied = self.env.applied(pid, ctx.device)
        cg_problems = lim.check_applied(applied, limits, self.env.swap())
        report["cgroup"] = applied
        if cg_problems and spec.strict:
            raise JobEnded(FAILED, "strict mode: the kernel does not enforce every limit: "
                           + "; ".join(cg_problems) + " (the job did not start)")
        report["problems"] = report.get("problems", []) + cg_problems
        self._check_stop(ctx, "starting")
        self._move(ctx, RUNNING, "limits checked; working", limits_applied=report)
        with _open(os.path.join(ctx.job_dir, "go"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "w") as fh:
            fh.write(str(self.clock()))
        ctx.gate_open = True

    def _apply_profile(self, ctx: _Ctx, endpoint: str, profile: str) -> dict:
        if not endpoint:
            raise JobEnded(FAILED, f"the container has no endpoint on {ctx.spec.network}: "
                                   f"cannot apply profile {profile}")
        found = self.np_store.get_endpoint(endpoint)
        if found is None:
            raise JobEnded(FAILED, f"network {ctx.spec.network} is not a netplugin network (no endpoint record for "
                                   f"{endpoint[:12]}): bandwidth profiles need one")
        ep = self.np_store.change_endpoint(endpoint, lambda e: setattr(e, "limit", {"profile": profile}))
        prof = self.np_store.list_profiles().get(profile)
        want = (prof.rate_kbps, prof.burst_kb) if prof else None
        bridge = ""
        for host, _alive in self.np_store.list_hosts():
            if host.host == ep.host:
                bridge = host.bridge
        deadline = time.monotonic() + self.cfg.profile_wait
        got = None
        while time.monotonic() < deadline:
            got = self.env.meter(bridge, ep.port) if bridge else None
            if got and want and got[0] == want[0]:
                return {"name": profile, "rate_kbps": got[0], "burst_kb": got[1], "port": ep.port, "bridge": bridge}
            self.sleep(0.2)
        message = (f"bandwidth profile {profile} ({want[0] if want else '?'} kbit/s) is not enforced on port "
                   f"{ep.port} of bridge {bridge or '?'} after {self.cfg.profile_wait:.0f} s (switch has "
                   f"{got[0] if got else 'no limit'}): is netplugin running on host {ep.host}?")
        if ctx.spec.strict:
            raise JobEnded(FAILED, "strict mode: " + message)
        return {"name": profile, "problem": message}

    def _attach(self, ctx: _Ctx) -> None:
        try:
            stream = self.docker.attach(ctx.container)
        except Exception as exc:  # noqa: BLE001 - logs are also read afterwards
            log.warning("job %s: cannot attach to the logs: %s", ctx.job.id, exc)
            return
        path = os.path.join(ctx.job_dir, "job.log")

        def pump():
            pending = b""
            try:
                with _open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, "ab") as out:
                    for chunk in stream:
                        out.write(chunk)
                        out.flush()
                        pending += chunk
                        *lines, pending = pending.split(b"\n")
                        ctx.log_lines.extend(x.decode(errors="replace") for x in lines)
            except Exception as exc:  # noqa: BLE001 - the log stream ends in many ways; the job outcome comes from wait
                log.debug("job %s: log stream ended: %s", ctx.job.id, exc)
            if pending:
                ctx.log_lines.append(pending.decode(errors="replace"))
        ctx.attach_thread = threading.Thread(target=pump, name=f"logs-{ctx.job.id}", daemon=True)
        ctx.attach_thread.start()

    # -- waiting ------------------------------------------------------------------------------
    def _expected(self, ctx: _Ctx) -> dict:
        """What the job's progress is measured against: a restore reads its
        backup's bytes; a backup's written bytes are compared with its target's
        newest good backup (an estimate: the database may have grown)."""
        if ctx.job.kind == RESTORE and ctx.manifest and isinstance(ctx.manifest.get("size"), int):
            return {"total": ctx.manifest["size"], "total_basis": "backup size"}
        if ctx.job.kind == BACKUP:
            newest = self.store.backups(ctx.job.target)[:1]
            if newest:
                return {"total": newest[0].size, "total_basis": "previous backup"}
        return {}

    def _bytes_so_far(self, ctx: _Ctx) -> int:
        """A backup: the bytes written to its file; a restore: the bytes its load
        read, from the last figure dd's status=progress wrote (out/read.err)."""
        try:
            if ctx.job.kind == BACKUP:
                return os.path.getsize(ctx.host(ctx.rel(ctx.ext + ".partial")))
            with _open(os.path.join(ctx.job_dir, "out", "read.err"), os.O_RDONLY, "rb") as fh:
                fh.seek(max(0, os.fstat(fh.fileno()).st_size - 512))
                figures = re.findall(rb"(\d+) bytes", fh.read())
            return int(figures[-1]) if figures else 0
        except (OSError, InvalidRequest):
            return 0

    def _wait(self, ctx: _Ctx) -> None:
        last_progress = self.clock()
        expected = self._expected(ctx)
        self._record(ctx, progress={"bytes": self._bytes_so_far(ctx), "time": last_progress, **expected})
        while True:
            remaining = ctx.job.run_by - self.clock() if ctx.job.run_by else 2.0
            if remaining <= 0:
                self._check_stop(ctx, "running")
            ctx.exit_code = self.docker.wait(ctx.container, timeout=max(0.2, min(2.0, remaining)))
            if ctx.exit_code is not None:
                break
            self._check_stop(ctx, "running")
            if ctx.physical:
                ctx.physical.watch(ctx)
            if self.clock() - last_progress >= 5:
                last_progress = self.clock()
                self._record(ctx, progress={"bytes": self._bytes_so_far(ctx), "time": last_progress, **expected})
        self._collect(ctx)

    def _collect(self, ctx: _Ctx) -> None:
        """Exit code, OOM flag and log tail of the stopped container."""
        try:
            info = self.docker.inspect(ctx.container)
            state = info.get("State", {})
            ctx.exit_code = state.get("ExitCode", ctx.exit_code)
            ctx.oom = bool(state.get("OOMKilled"))
        except Exception as exc:  # noqa: BLE001 - best effort: the exit code from wait stands
            log.warning("job %s: cannot inspect the stopped container: %s", ctx.job.id, exc)
        if ctx.attach_thread is not None:
            ctx.attach_thread.join(timeout=5)
        tail = list(ctx.log_lines)[-self.cfg.log_tail_lines:]
        if not tail:
            tail = self.docker.log_tail(ctx.container, self.cfg.log_tail_lines)
        text = "\n".join(tail)[-8192:]
        self._record(ctx, exit_code=ctx.exit_code, oom_killed=ctx.oom, log_tail=text)

    # -- verifying --------------------------------------------------------------------------------
    def _finish(self, ctx: _Ctx) -> None:
        if ctx.exit_code is None:
            self._collect(ctx)
        if ctx.oom:
            mem = lim.human_bytes(ctx.limits.memory) if ctx.limits.memory else "?"
            said = (_Outputs(ctx.job_dir).get("error") or "").strip()
            raise JobEnded(FAILED, f"the job was OOM-killed: it needed more than its memory limit ({mem})"
                           + (f": {said}" if said else self._restore_note(ctx)))
        if ctx.exit_code != 0:
            error = (_Outputs(ctx.job_dir).get("error") or "").strip() or self._restore_note(ctx).lstrip("; ")
            last = ctx.job.log_tail.strip().splitlines()[-1:] if ctx.job.log_tail else []
            why = error or (last[0] if last else "no message")
            if ctx.job.kind == BACKUP and ctx.volume_path and (
                    "No space left" in f"{why}\n{ctx.job.log_tail}" or ondisk.volume_full(ctx.volume_path)):
                raise JobEnded(FAILED, f"the backup volume {ctx.spec.volume} is full: {ondisk.ENOSPC} during the "
                                       f"dump; nothing was catalogued (exit code {ctx.exit_code}: {why})")
            raise JobEnded(FAILED, f"the job exited with code {ctx.exit_code}: {why}")
        self._check_stop(ctx, "verifying")
        if ctx.job.state != VERIFYING:
            self._move(ctx, VERIFYING, "checking the result")
        if ctx.physical:
            result = ctx.physical.verify(ctx)
        else:
            result = self._verify_backup(ctx) if ctx.job.kind == BACKUP else self._verify_restore(ctx)
        self._move(ctx, SUCCEEDED, result.pop("message"), result=result)
        if ctx.job.kind == BACKUP and result.get("backup") and not result.get("adopted"):
            # Retention only once the success is on record: a failure from here on
            # can no longer end the job failed with older backups already deleted.
            self._prune_after_success(ctx)

    def _prune_after_success(self, ctx: _Ctx) -> None:
        try:
            pruned = self._prune(ctx)
        except Exception as exc:  # noqa: BLE001 - the job has succeeded; retention must not undo that
            log.warning("job %s: retention failed: %s: %s", ctx.job.id, type(exc).__name__, exc)
            pruned = [f"skipped: {type(exc).__name__}: {exc}"]
        if pruned is None:
            return
        try:
            self._update(ctx, lambda j: j.result.__setitem__("pruned", pruned))
        except Exception as exc:  # noqa: BLE001 - the prune happened; only its record is lost
            log.warning("job %s: pruned %s, but cannot record it: %s", ctx.job.id, pruned, exc)

    def _verify_backup(self, ctx: _Ctx) -> dict:
        spec, job = ctx.spec, ctx.job
        out = _Outputs(ctx.job_dir)
        partial = ctx.host(ctx.rel(ctx.ext + ".partial"))
        stages = verify.stages(out, "dump")
        verify.dump_marker(out)
        try:
            size = os.path.getsize(partial)
        except OSError:
            done = self._already_renamed(ctx)
            if done is not None:
                return done
            raise JobEnded(FAILED, f"verification: {ctx.rel(ctx.ext + '.partial')} is missing") from None
        sha = verify.dump_file(out, size, self.cfg.min_size)
        ondisk.check_written(partial, ctx.rel(ctx.ext + ".partial"), spec.compression, sha)
        tables, lock = verify.snapshot_tables(out, spec.checksums)
        now = self.clock()
        manifest = manifests.build(job, spec, out, name=backup_name(job.target, job.id), file=ctx.rel(ctx.ext),
                                   size=size, sha256=sha, tables=tables, lock=lock, stages=stages,
                                   created=job.entered(RUNNING) or job.created, finished=now,
                                   image=spec.image or self.cfg.image)
        ondisk.publish(partial, ctx.host(ctx.rel(ctx.ext)), ctx.host(ctx.rel(".manifest.json")), manifest,
                       spec.volume)
        self.store.add_backup(manifests.catalog_record(manifest, job.target, spec.volume,
                                                       ctx.rel(".manifest.json"), job.host))
        result = dict(manifests.summary(manifest), read_lock=lock)
        started = job.entered(RUNNING)
        if started:
            result["seconds"] = round(now - started, 3)
        skipped = manifest["not_transactional"]
        note = f" ({len(skipped)} tables of engines outside the snapshot: {', '.join(skipped)})" if skipped else ""
        result["message"] = (f"backup {manifest['name']}: {lim.human_bytes(size)}, {len(tables)} tables, "
                             f"{manifest['rows']} rows{note}")
        return result

    def _already_renamed(self, ctx: _Ctx) -> dict | None:
        """An agent that stopped between the rename and the end: the backup and its
        manifest are in place, written by this job; finish the bookkeeping."""
        try:
            manifest = manifests.read(ctx.host(ctx.rel(".manifest.json")))
            size = os.path.getsize(ctx.host(ctx.rel(ctx.ext)))
        except (OSError, ValueError, InvalidRequest):
            return None
        if manifest.get("job") != ctx.job.id or manifest.get("size") != size:
            return None
        job = ctx.job
        self.store.add_backup(manifests.catalog_record(manifest, job.target, ctx.spec.volume,
                                                       ctx.rel(".manifest.json"), job.host))
        return dict(manifests.summary(manifest), adopted=True,
                    message=f"backup {manifest['name']}: {lim.human_bytes(size)} (completed after the agent "
                            "restarted)")

    def _prune(self, ctx: _Ctx) -> list[str] | None:
        """Retention after this verified success; never fails the job."""
        spec = ctx.spec
        tiers = retention.Tiers(spec.keep_daily, spec.keep_weekly, spec.keep_monthly)
        if spec.keep_last is None and spec.max_age is None and not tiers and spec.budget is None:
            return None
        try:
            report = retention.prune(self.store, ctx.job.target, spec.keep_last, spec.max_age, self.clock(),
                                     volume_path=self.docker.volume_path, host=ctx.job.host, tiers=tiers,
                                     budget=spec.budget)
            return report.deleted
        except NetpluginError as exc:
            log.warning("job %s: retention skipped: %s", ctx.job.id, exc.message)
            return [f"skipped: {exc.message}"]

    def _verify_restore(self, ctx: _Ctx) -> dict:
        out = _Outputs(ctx.job_dir)
        verify.stages(out, "load")
        manifest = ctx.manifest or self._load_manifest(ctx)
        expected: dict = manifest.get("tables") or {}
        checked, unverifiable, rows = verify.restored_tables(out, manifest, ctx.spec.checksums)
        result = {"backup": manifest["name"], "database": ctx.spec.database, "tables_verified": checked,
                  "rows_verified": rows, "unverifiable": unverifiable, "size": manifest["size"]}
        if ctx.spec.replay:
            from .pitr import replay_result
            result["replay"] = replay_result(ctx.spec.replay, out)
        started = ctx.job.entered(RUNNING)
        if started:
            result["seconds"] = round(self.clock() - started, 3)
        warning = verify.restore_warning(manifest, unverifiable, ctx.spec.checksums)
        if warning:
            result["warning"] = warning
        swap = jobscript.parse_status(out.get("swap") or "")
        left = (out.get("left_schemas") or "").split()
        if swap:
            result["swapped"] = {"tables_in": swap.get("in"), "tables_out": swap.get("out")}
        if left:
            result["left_schemas"] = left
            result["warning"] = (f"{warning}; " if warning else "") + \
                f"schema(s) {', '.join(left)} of the swap could not be dropped: drop them by hand"
        note = f"; WARNING: {result['warning']}" if result.get("warning") else ""
        how = f" (swapped in for {swap.get('out')} old tables, now dropped)" if swap and not left else ""
        result["message"] = (f"restored {manifest['name']} into {ctx.spec.database}{how}: {checked} of "
                             f"{len(expected)} tables, {rows} rows match the manifest{note}")
        return result

    # -- ending -----------------------------------------------------------------------------------
    def _end(self, ctx: _Ctx, state: str, message: str) -> None:
        if ctx.physical:
            ctx.physical.ended(ctx, state)
        if ctx.job_dir and not ctx.gate_open:
            with contextlib.suppress(OSError), _open(os.path.join(ctx.job_dir, "abort"),
                                                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "w"):
                pass
        if ctx.container:
            try:
                self.docker.stop(ctx.container)
                if ctx.exit_code is None:
                    self._collect(ctx)
            except Exception as exc:  # noqa: BLE001 - clean-up goes on whatever Docker says
                log.warning("job %s: cannot stop container %s: %s", ctx.job.id, ctx.container[:12], exc)
        if ctx.job.kind == BACKUP and ctx.volume_path:
            for suffix in (ctx.ext + ".partial", ".manifest.json.partial"):
                try:
                    os.unlink(ctx.host(ctx.rel(suffix)))
                    log.info("job %s: removed %s", ctx.job.id, ctx.rel(suffix))
                except FileNotFoundError:
                    pass
                except (OSError, InvalidRequest) as exc:
                    log.warning("job %s: cannot remove %s: %s", ctx.job.id, ctx.rel(suffix), exc)
        try:
            self._move(ctx, state, message)
        except Conflict:
            found = self.store.get(ctx.job.id)
            if found and found[0].state in TERMINAL:
                ctx.job = found[0]
            else:
                raise
        log.info("job %s: %s: %s", ctx.job.id, state, message)

