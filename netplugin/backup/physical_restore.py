"""Physical restore: prepare a chain of physical backups (the full one, then
each incremental in order) in a scratch folder of a FRESH data volume, move
the prepared files into it, start a MariaDB server on it on the target
network, and compare every table's rows and checksum with the manifest of
the backup restored. The backup files are only read (physical.PREPARE
unpacks them into the scratch folder and prepares that copy).

Two ways in: a restore job (``drctl restore --method physical``, the runner's
steps in ``PhysicalRestore``), and ``restore_physical`` for callers with no
job of their own (point-in-time recovery): both use the same pieces.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import secrets
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from ..errors import InvalidRequest, NetpluginError
from . import jobscript, physical, physical_chain, trust, verify
from . import manifest as manifests
from . import resources as lim
from .config import BackupConfig
from .containers import Containers, is_not_found
from .model import FAILED, RUNNING, Backup, JobEnded, Limits
from .physical_jobs import PhysicalSteps

log = logging.getLogger(__name__)

READY = "ready for connections"
LABEL_SERVER = "netplugin.backup.restored-from"
CNF_IN_SERVER = "/run/drctl/client.cnf"


@dataclass
class RestoredServer:
    """The server a physical restore started: where to reach it, what it holds."""

    container: str
    name: str
    network: str
    ip: str
    port: int
    data_volume: str
    image: str
    backup: str                   # the backup restored (the last of its chain)
    chain: list                   # every backup prepared, the full one first
    binlog: dict | None           # the source's binlog coordinates at that backup's point (where a replay starts)
    tables_verified: int = 0
    rows_verified: int = 0


# -- the pieces --------------------------------------------------------------------------------
def resolve_chain(store, name: str, volume_path) -> tuple[list[Backup], list[dict]]:
    """The chain of backup name from the catalog, each record checked and its
    manifest read from its volume (volume_path(volume) -> host folder) and
    matched with the catalog. Raises InvalidRequest or NotFound."""
    found = store.find_backup(name)
    backups = trust.valid_backups(store.backups(found.target), log)
    links = [trust.check_backup(b) for b in physical_chain.chain(backups, name)]
    manifests_ = []
    for b in links:
        base = volume_path(b.volume)
        if base is None:
            raise InvalidRequest(f"backup {b.name} is in volume {b.volume}, which is not a local volume of this "
                                 "host: restore on the host that holds it")
        try:
            m = manifests.read(trust.inside(base, b.manifest_path))
        except (OSError, ValueError) as exc:
            raise InvalidRequest(f"manifest of backup {b.name} cannot be read: {exc}") from None
        if m.get("sha256") != b.sha256 or m.get("size") != b.size or m.get("file") != b.path:
            raise InvalidRequest(f"manifest of backup {b.name} does not match the catalog (sha256, size or file)")
        manifests_.append(m)
    if len({b.volume for b in links}) != 1:
        raise InvalidRequest(f"the chain of {name} spans volumes {sorted({b.volume for b in links})}: a restore "
                             "reads one volume")
    return links, manifests_


def write_folder(folder: str, links: list[Backup], direct: bool) -> None:
    """The prepare container's job folder: script, params, chain."""
    if os.path.exists(folder):
        shutil.rmtree(folder)
    os.makedirs(os.path.join(folder, "bin"), mode=0o700)
    os.makedirs(os.path.join(folder, "out"), mode=0o700)
    params = {"ROLE": "restore", "DIRECT": direct, "DATA": physical.RESTORE_MOUNT, "USE_MEMORY": "256M"}
    for name, text in (("bin/job.sh", physical.PREPARE), ("params", jobscript.params_text(params)),
                       ("chain", physical.chain_file([(b.path, b.size, b.sha256) for b in links]))):
        with open(os.path.join(folder, name), "w") as fh:
            fh.write(text)


def check_fresh(docker: Containers, data_volume: str, server_name: str) -> None:
    """Nothing of the restore exists yet: no such volume, no such container."""
    if docker.volume(data_volume) is not None:
        raise InvalidRequest(f"data volume {data_volume} exists: a physical restore writes a fresh one "
                             "(name another with --data-volume, or remove it)")
    try:
        docker.inspect(server_name)
    except Exception as exc:  # Docker's own error types; only NotFound is an answer
        if is_not_found(exc):
            return
        raise
    raise InvalidRequest(f"a container named {server_name} exists: the restored server takes that name "
                         "(choose another --target, or remove it)")


def start_server(client, cfg: BackupConfig, *, name: str, image: str, network: str, ip: str, port: int,
                 data_volume: str, option_file: str, labels: dict, ready_timeout: float = 300.0,
                 sleep=time.sleep) -> tuple[str, str]:
    """A MariaDB server container on the restored data volume; started and
    waited for until its log says it is ready. Returns (container id, address)."""
    host_config = client.create_host_config(
        network_mode=network, auto_remove=False, restart_policy={"Name": "no"}, mem_limit=cfg.drill_memory,
        mounts=[{"Type": "volume", "Source": data_volume, "Target": "/var/lib/mysql", "ReadOnly": False},
                {"Type": "bind", "Source": option_file, "Target": CNF_IN_SERVER, "ReadOnly": True}])
    networking = None
    if ip:
        networking = client.create_networking_config({network: client.create_endpoint_config(ipv4_address=ip)})
    command = [f"--port={int(port)}"] if port != 3306 else []
    cid = client.create_container(image, name=name, command=command, host_config=host_config, labels=labels,
                                  networking_config=networking, use_config_proxy=False)["Id"]
    docker = Containers(client)
    docker.start(cid)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        info = docker.inspect(cid)
        if not (info.get("State") or {}).get("Running"):
            tail = " | ".join(docker.log_tail(cid, 5))
            raise InvalidRequest(f"the restored server exited before it was ready: {tail[:400]}")
        addr = ((info.get("NetworkSettings") or {}).get("Networks") or {}).get(network, {}).get("IPAddress")
        if addr and any(READY in line for line in docker.log_tail(cid, 30)):
            return cid, str(addr)
        sleep(0.5)
    raise InvalidRequest(f"the restored server was not ready within {ready_timeout:.0f} s")


def _exec(client, cid: str, cmd: list[str]) -> str:
    run = client.exec_create(cid, cmd, stdout=True, stderr=True)
    out, err = client.exec_start(run["Id"], demux=True)
    code = client.exec_inspect(run["Id"]).get("ExitCode")
    if code != 0:
        raise InvalidRequest(f"checksums in the restored server failed (exit {code}): "
                             f"{(err or b'').decode(errors='replace')[-400:]}")
    return (out or b"").decode(errors="replace")


def server_checksums(client, cid: str, database: str, port: int, parallel: int = 2) -> str:
    """Per table "name engine rows checksum" of database in the restored
    server, through the mounted option file (the source's users came back with
    the data). The server is new and nobody else writes to it yet, so the
    tables are read ``parallel`` at a time, each in a session of its own."""
    sql = ["mariadb", f"--defaults-file={CNF_IN_SERVER}", "--host=127.0.0.1", f"--port={int(port)}", "--batch",
           "--skip-column-names", "--default-character-set=utf8mb4"]
    gen = _exec(client, cid, [*sql, "--raw", "-e",
                              jobscript.CHECKSUM_GEN_SQL.replace("@SCHEMA@", trust.check_database(database))])
    statements = [line for line in gen.splitlines() if line.strip()]
    with ThreadPoolExecutor(max(1, min(parallel, len(statements) or 1))) as pool:
        answers = list(pool.map(lambda q: _exec(client, cid, [*sql, database, "-e", q]), statements))
    return "".join(answers)


def check_restored(client, cid: str, manifest: dict, port: int) -> tuple[int, list[str], int]:
    """Every table of the manifest against the restored server: (tables, unverifiable, rows); raises JobEnded."""
    got = server_checksums(client, cid, manifest["database"], port)
    return verify.restored_tables({"checksums.restored": got}, manifest, True)


def _server_ip(db_host: str) -> str:
    """--db-host of a physical restore: a fixed IPv4 address for the new server, or any name for IPAM's choice."""
    try:
        return str(ipaddress.IPv4Address(db_host))
    except ValueError:
        return ""


# -- a restore job -----------------------------------------------------------------------------
class PhysicalRestore(PhysicalSteps):
    def __init__(self, runner):
        self.r = runner
        self.links: list[Backup] = []
        self.manifests: list[dict] = []
        self.made_volume = False
        self.server: str = ""

    def prepare(self, ctx) -> None:
        spec = ctx.spec
        self.r._prepare(ctx)                    # the runner's checks, the backup's manifest against the catalog
        d = self.r.docker
        try:
            self.links, self.manifests = resolve_chain(self.r.store, spec.backup, d.volume_path)
            check_fresh(d, spec.data_volume, ctx.job.target)
        except NetpluginError as exc:
            raise JobEnded(FAILED, exc.message) from None
        if any(b.volume != spec.volume for b in self.links):
            raise JobEnded(FAILED, f"the chain of {spec.backup} is not in volume {spec.volume}")
        d.client.create_volume(spec.data_volume, driver="local", labels={LABEL_SERVER: spec.backup})
        self.made_volume = True
        ctx.extra_mounts = [{"Type": "volume", "Source": spec.data_volume, "Target": physical.RESTORE_MOUNT,
                             "ReadOnly": False}]
        ctx.manifest = dict(ctx.manifest or {}, size=sum(b.size for b in self.links))
        write_folder(ctx.job_dir, self.links, bool(ctx.limits.read_bps or ctx.limits.read_iops))

    def verify(self, ctx) -> dict:
        from .runner import _Outputs
        spec, job = ctx.spec, ctx.job
        verify.stages(_Outputs(ctx.job_dir), "prepare")
        if not self.manifests:                          # adopted by a new agent
            try:
                self.links, self.manifests = resolve_chain(self.r.store, spec.backup, self.r.docker.volume_path)
            except NetpluginError as exc:
                raise JobEnded(FAILED, exc.message) from None
            self.made_volume = True
        manifest = self.manifests[-1]
        image = spec.server_image or self.r.cfg.drill_image
        try:
            self.server, ip = start_server(
                self.r.docker.client, self.r.cfg, name=job.target, image=image, network=spec.network,
                ip=_server_ip(spec.db_host), port=spec.db_port, data_volume=spec.data_volume,
                option_file=ctx.option_file, labels={LABEL_SERVER: spec.backup, "netplugin.backup.job": job.id},
                sleep=self.r.sleep)
        except InvalidRequest as exc:
            raise JobEnded(FAILED, exc.message) from None
        checked, unverifiable, rows = check_restored(self.r.docker.client, self.server, manifest, spec.db_port) \
            if spec.checksums else (0, [], 0)
        warning = verify.restore_warning(manifest, unverifiable, spec.checksums)
        server = RestoredServer(container=self.server, name=job.target, network=spec.network, ip=ip,
                                port=spec.db_port, data_volume=spec.data_volume, image=image, backup=spec.backup,
                                chain=[b.name for b in self.links], binlog=manifest.get("binlog"),
                                tables_verified=checked, rows_verified=rows)
        result = {"backup": spec.backup, "method": "physical", "database": manifest["database"],
                  "server": asdict(server), "tables_verified": checked, "rows_verified": rows,
                  "unverifiable": unverifiable, "size": sum(b.size for b in self.links)}
        started = job.entered(RUNNING)
        if started:
            result["seconds"] = round(self.r.clock() - started, 3)
        if warning:
            result["warning"] = warning
        note = f"; WARNING: {warning}" if warning else ""
        result["message"] = (f"restored {spec.backup} (chain of {len(self.links)}) into a fresh server {job.target} "
                             f"at {ip}:{spec.db_port} on {spec.network}: {checked} of "
                             f"{len(manifest.get('tables') or {})} tables, {rows} rows match the manifest{note}")
        return result

    def ended(self, ctx, state: str) -> None:
        """A failed restore leaves nothing: no server, no half-written data volume."""
        client = self.r.docker.client
        if self.server:
            with contextlib.suppress(Exception):
                client.remove_container(self.server, force=True)
        if self.made_volume:
            with contextlib.suppress(Exception):
                if ctx.container:               # its log tail first: the container goes with the volume
                    self.r.docker.stop(ctx.container)
                    if ctx.exit_code is None:
                        self.r._collect(ctx)
                    client.remove_container(ctx.container, force=True)
                client.remove_volume(ctx.spec.data_volume, force=True)


# -- for callers without a job: point-in-time recovery ------------------------------------------
def restore_physical(store, client, cfg: BackupConfig, *, backup: str, network: str, data_volume: str,
                     server_name: str, option_file: str, ip: str = "", port: int = 3306, server_image: str = "",
                     limits: Limits | None = None, timeout: float = 6 * 3600.0,
                     sleep=time.sleep) -> RestoredServer:
    """Restore the physical backup ``backup`` (its whole chain, from the
    catalog) into a NEW server container ``server_name`` on ``network``, on a
    NEW data volume ``data_volume``; return the started, verified server.

    Contract (kept stable): runs on the host whose local volume holds the
    chain; ``option_file`` is a path in the ``option_dir`` setting holding the
    SOURCE's credentials (the restored server has the source's users); ``ip``
    fixes the server's address (else IPAM picks); ``port`` is the port it
    listens on. The prepare container runs the tools image under ``limits``
    (default: none) and ends within ``timeout`` seconds. Every table's rows
    and checksum are compared with the manifest of ``backup``. Raises a
    NetpluginError (InvalidRequest, NotFound) saying why, having removed the
    server and the data volume it made; never touches the backup files.
    ``RestoredServer.binlog`` is the source's binlog position at the backup
    point, where a replay of archived binlogs starts.
    """
    trust.check_backup_name(backup)
    for what, value in (("network", network), ("data volume", data_volume)):
        if not trust.VOLUME_RE.fullmatch(str(value)):
            raise InvalidRequest(f"{what} {str(value)[:80]!r} is not a Docker name")
    trust.check_name(server_name, "server name")
    cnf = trust.option_file(option_file, cfg)
    image = trust.check_image(server_image or cfg.drill_image, cfg, server=True)
    docker = Containers(client)
    links, mans = resolve_chain(store, backup, docker.volume_path)
    check_fresh(docker, data_volume, server_name)
    folder = trust.child(cfg.work_dir, f"restore-{secrets.token_hex(6)}")
    write_folder(folder, links, False)
    with open(os.path.join(folder, "go"), "w") as fh:
        fh.write("go")
    client.create_volume(data_volume, driver="local", labels={LABEL_SERVER: backup})
    prep = server = ""
    try:
        mounts = [{"Type": "volume", "Source": links[0].volume, "Target": "/backup", "ReadOnly": True},
                  {"Type": "volume", "Source": data_volume, "Target": physical.RESTORE_MOUNT, "ReadOnly": False},
                  {"Type": "bind", "Source": folder, "Target": "/job", "ReadOnly": False}]
        prep, _warn = docker.create(cfg.image, name=f"drctl-prepare-{os.path.basename(folder)}",
                                    command=["/bin/bash", "/job/bin/job.sh"], labels={LABEL_SERVER: backup},
                                    mounts=mounts, network="none", ip=None,
                                    limits=lim.host_config_kwargs(limits or Limits(), None), working_dir="/job",
                                    environment={})
        docker.start(prep)
        code = docker.wait(prep, timeout=timeout)
        if code != 0:
            why = ""
            with contextlib.suppress(OSError), open(os.path.join(folder, "out", "error")) as fh:
                why = fh.read().strip()
            raise InvalidRequest(f"preparing the chain of {backup} failed (exit {code}): {why or 'no message'}")
        server, addr = start_server(client, cfg, name=server_name, image=image, network=network, ip=ip, port=port,
                                    data_volume=data_volume, option_file=cnf, labels={LABEL_SERVER: backup},
                                    sleep=sleep)
        try:
            checked, _unverifiable, rows = check_restored(client, server, mans[-1], port)
        except JobEnded as exc:
            raise InvalidRequest(exc.message) from None
        return RestoredServer(container=server, name=server_name, network=network, ip=addr, port=port,
                              data_volume=data_volume, image=image, backup=backup, chain=[b.name for b in links],
                              binlog=mans[-1].get("binlog"), tables_verified=checked, rows_verified=rows)
    except BaseException:
        for cid in (server, prep):
            if cid:
                with contextlib.suppress(Exception):
                    client.remove_container(cid, force=True)
        with contextlib.suppress(Exception):
            client.remove_volume(data_volume, force=True)
        raise
    finally:
        if prep:
            with contextlib.suppress(Exception):
                client.remove_container(prep, force=True)
        shutil.rmtree(folder, ignore_errors=True)
