"""What drctl may believe of a record read from etcd, and where it may touch files.

``check_job`` is the one validation of a job: ``drctl run``/``restore`` calls
it before submitting and the agent again on every job it reads, so a record
written by hand or by an older version is refused with the same words. It
checks every field's type and shape, that ids and names are single path
components, that the image is one the settings allow and that the option file
lies in the allowed folder. ``check_backup`` does the same for a catalog
record. ``inside`` and ``child`` resolve a path and refuse one that leaves its
base (``..``, absolute parts, symlinks pointing out).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import fields
from pathlib import Path

from ..errors import InvalidRequest
from .config import BackupConfig
from .model import (
    BINLOG,
    COMPRESSIONS,
    KINDS,
    RESTORE,
    STATES,
    Backup,
    Job,
    JobSpec,
    Limits,
    check_database,
    check_db_host,
    check_name,
)

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")          # job ids: one path component, no dots
HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")     # as netplugin's host_id setting
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")     # one path component: never '.' or '..'
VOLUME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
PHYSICAL_EXT = ".mbstream.zst"     # a physical backup's file: mariadb-backup's mbstream, zstd-compressed
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _fail(what: str, value: object, rule: str) -> InvalidRequest:
    return InvalidRequest(f"{what} {str(value)[:80]!r} {rule}")


def check_id(value: object, what: str = "job id") -> str:
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise _fail(what, value, "must be 1-64 letters, digits, '_' or '-' (it names a folder)")
    return value


def check_host(value: object) -> str:
    if not isinstance(value, str) or not HOST_RE.fullmatch(value):
        raise _fail("host", value, "is not a host id (1-63 letters, digits, '.', '_' or '-')")
    return value


def check_backup_name(value: object, what: str = "backup name") -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise _fail(what, value, "must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit "
                                "(it names a file)")
    return value


def _number(value: object, what: str, low: float = 0.0, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
        raise _fail(what, value, f"must be a number of at least {low:g}")


def _text(value: object, what: str, limit: int = 256) -> str:
    """value as text, refused when it is not short text without control characters."""
    if not isinstance(value, str) or len(value) > limit or _CONTROL_RE.search(value):
        raise _fail(what, value, f"must be text of at most {limit} characters without control characters")
    return value


def allowed_images(cfg: BackupConfig) -> list[str]:
    return list(cfg.images) or [cfg.image]


def check_image(image: str, cfg: BackupConfig, server: bool = False) -> str:
    """A tools image the settings allow; server: the server image a physical
    restore starts (the ``drill_image`` setting, or one of ``images``)."""
    allowed = allowed_images(cfg) + ([cfg.drill_image] if server else [])
    if image not in allowed:
        raise InvalidRequest(f"image {image[:120]!r} is not allowed for drctl jobs (allowed: {', '.join(allowed)}); "
                             "add it to the 'images' setting of drctl.toml on the agent's host")
    return image


def check_option_path(path: object, cfg: BackupConfig) -> str:
    """An absolute path in the allowed folder, by its text (no file system)."""
    path = _text(path, "option file", 4096)
    base = os.path.normpath(cfg.option_dir)
    if not os.path.isabs(path) or os.path.normpath(path) != path or os.path.dirname(path) == path \
            or not Path(path).is_relative_to(base) or path == base:
        raise InvalidRequest(f"option file {path[:120]!r} must be a normalised absolute path in {base} "
                             "(the 'option_dir' setting): only files there are mounted into job containers")
    return path


def option_file(path: str, cfg: BackupConfig) -> str:
    """The option file on this host, resolved: still inside the allowed folder
    (a symlink out of it is refused). Returns the resolved path to mount."""
    check_option_path(path, cfg)
    return inside(cfg.option_dir, os.path.relpath(path, os.path.normpath(cfg.option_dir)), what="option file")


def _check_limits(limits: object) -> None:
    if not isinstance(limits, dict):
        raise _fail("limits", limits, "must be a mapping")
    known = {f.name for f in fields(Limits)}
    for key, value in limits.items():
        if key not in known:
            raise _fail("limit", key, "is not a known limit")
        if key == "profile":
            if value:
                check_name(value, "profile name")
        else:
            _number(value, f"limit {key}", 0, optional=True)


def _check_labels(labels: object) -> None:
    if not isinstance(labels, dict) or len(labels) > 64:
        raise _fail("labels", labels, "must be a mapping of at most 64 labels")
    for key, value in labels.items():
        _text(key, "label key", 128)
        _text(value, "label value", 1024)


def check_spec(kind: str, data: object, cfg: BackupConfig) -> JobSpec:
    """A job's spec as it must be to be run: every field typed and shaped."""
    if not isinstance(data, dict):
        raise _fail("spec", data, "must be a mapping")
    try:
        spec = JobSpec.from_dict(data)
    except TypeError as exc:
        raise InvalidRequest(f"spec is incomplete: {exc}") from None
    if not VOLUME_RE.fullmatch(str(spec.network)) or not isinstance(spec.network, str):
        raise _fail("network", spec.network, "is not a network name")
    check_db_host(spec.db_host)
    if isinstance(spec.db_port, bool) or not isinstance(spec.db_port, int) or not 1 <= spec.db_port <= 65535:
        raise _fail("db port", spec.db_port, "is not a port")
    if spec.ip != "":
        try:
            ipaddress.IPv4Address(_text(spec.ip, "ip", 15))
        except ValueError:
            raise _fail("ip", spec.ip, "is not an IPv4 address") from None
    check_image(_text(spec.image, "image") or cfg.image, cfg)
    check_option_path(spec.option_file, cfg)
    if not isinstance(spec.volume, str) or not VOLUME_RE.fullmatch(spec.volume):
        raise _fail("volume", spec.volume, "is not a Docker volume name")
    if kind != BINLOG or spec.database:          # a collector reads the whole log: no schema
        check_database(spec.database)
    if spec.compression not in COMPRESSIONS:
        raise _fail("compression", spec.compression, f"must be one of {', '.join(COMPRESSIONS)}")
    _check_limits(spec.limits)
    _check_labels(spec.labels)
    if spec.replay:
        from .pitr import check_replay
        if kind != RESTORE or spec.replace:
            raise InvalidRequest("only a restore into a schema that is empty replays binlogs (--at without "
                                 "--replace): a replay that fails part-way must leave nothing live half-changed")
        spec.replay = check_replay(spec.replay)
    _number(spec.start_timeout, "start timeout", 0)
    _number(spec.timeout, "timeout", 0)
    _number(spec.max_age, "max age", 0, optional=True)
    if spec.keep_last is not None and (isinstance(spec.keep_last, bool) or not isinstance(spec.keep_last, int)
                                       or spec.keep_last < 1):
        raise _fail("keep-last", spec.keep_last, "must be a whole number of at least 1")
    for name in ("keep_daily", "keep_weekly", "keep_monthly", "budget"):
        value = getattr(spec, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise _fail(name.replace("_", "-"), value, "must be a whole number, 0 or more")
    for name in ("replace", "checksums", "strict", "into_source"):
        if not isinstance(getattr(spec, name, False), bool):
            raise _fail(name, getattr(spec, name), "must be true or false")
    _check_physical(kind, spec, cfg)
    if kind == RESTORE:
        check_backup_name(spec.backup)
        if spec.source_target:
            check_name(spec.source_target, "source target")
    elif spec.backup or spec.source_target or spec.replace:
        raise InvalidRequest("a backup job names no backup, source target or replace")
    return spec


def _check_physical(kind: str, spec: JobSpec, cfg: BackupConfig) -> None:
    """The fields of a physical job (physical_chain.py): names that reach a
    container's mounts and command line."""
    if spec.method not in ("logical", "physical"):
        raise _fail("method", spec.method, "must be logical or physical")
    if not isinstance(spec.incremental, bool):
        raise _fail("incremental", spec.incremental, "must be true or false")
    if spec.method == "logical":
        if spec.incremental or spec.data_volume or spec.db_host_id or spec.server_image:
            raise InvalidRequest("a logical job takes no --incremental, data volume, database host id or server "
                                 "image: those are for --method physical")
        return
    if not isinstance(spec.data_volume, str) or not VOLUME_RE.fullmatch(spec.data_volume):
        raise _fail("data volume", spec.data_volume, "is not a Docker volume name")
    if spec.data_volume == spec.volume:
        raise InvalidRequest(f"the data volume and the backup volume are both {spec.volume}: they must differ")
    if kind == RESTORE:
        if spec.incremental or spec.db_host_id or spec.replace:
            raise InvalidRequest("a physical restore starts a fresh server on a fresh data volume: it takes no "
                                 "--incremental, database host id or --replace")
        check_image(_text(spec.server_image, "server image") or cfg.drill_image, cfg, server=True)
    else:
        check_host(spec.db_host_id)
        if spec.server_image:
            raise InvalidRequest("a physical backup takes no server image")


def check_job(job: Job, cfg: BackupConfig) -> JobSpec:
    """The one validation of a job record (the CLI before submitting, the agent
    on reading): raises InvalidRequest saying what is wrong; returns its spec."""
    check_id(job.id)
    if job.kind not in KINDS:
        raise _fail("kind", job.kind, f"must be one of {', '.join(KINDS)}")
    check_name(job.target, "target")
    check_host(job.host)
    if job.state not in STATES:
        raise _fail("state", job.state, "is not a job state")
    if not isinstance(job.history, list):
        raise _fail("history", job.history, "must be a list")
    for name in ("created", "updated", "start_by", "run_by"):
        _number(getattr(job, name), name, 0)
    if job.slot is not None and (isinstance(job.slot, bool) or not isinstance(job.slot, int) or job.slot < 0):
        raise _fail("slot", job.slot, "must be a whole number")
    _text(job.server, "server")
    _text(job.container, "container", 128)
    if not isinstance(job.place, dict) or len(job.place) > 16:
        raise _fail("place", job.place, "must be a mapping of at most 16 labels")
    for key, value in job.place.items():
        check_name(key, "place label")
        check_name(value, "place value")
    return check_spec(job.kind, job.spec, cfg)


def check_backup(backup: Backup) -> Backup:
    """A catalog record as the runner writes it: names that are path
    components, and its files where its name says, inside the volume."""
    check_name(backup.target, "target")
    check_backup_name(backup.name)
    if not isinstance(backup.volume, str) or not VOLUME_RE.fullmatch(backup.volume):
        raise _fail("volume", backup.volume, "is not a Docker volume name")
    check_host(backup.host)
    check_id(backup.job, "job")
    if backup.compression not in COMPRESSIONS:
        raise _fail("compression", backup.compression, f"must be one of {', '.join(COMPRESSIONS)}")
    if backup.method not in ("logical", "physical"):
        raise _fail("method", backup.method, "must be logical or physical")
    if backup.parent:
        check_backup_name(backup.parent, "parent backup")
    ext = PHYSICAL_EXT if backup.method == "physical" else COMPRESSIONS[backup.compression]
    if backup.path != f"{backup.target}/{backup.name}{ext}":
        raise _fail("path", backup.path, f"must be {backup.target}/{backup.name}{ext}")
    if backup.manifest_path != f"{backup.target}/{backup.name}.manifest.json":
        raise _fail("manifest path", backup.manifest_path, f"must be {backup.target}/{backup.name}.manifest.json")
    if not isinstance(backup.sha256, str) or not SHA256_RE.fullmatch(backup.sha256):
        raise _fail("sha256", backup.sha256, "must be 64 hex digits")
    if isinstance(backup.size, bool) or not isinstance(backup.size, int) or backup.size < 0:
        raise _fail("size", backup.size, "must be a whole number of bytes")
    _number(backup.created, "created", 0)
    return backup


def valid_backups(backups: list[Backup], log) -> list[Backup]:
    """The catalog records that pass check_backup; each other one is logged."""
    good = []
    for b in backups:
        try:
            good.append(check_backup(b))
        except InvalidRequest as exc:
            log.warning("catalog record %s/%s skipped: %s", str(b.target)[:64], str(b.name)[:128], exc.message)
    return good


# -- file system confinement ---------------------------------------------------------------

def inside(base: str, rel: str, what: str = "path") -> str:
    """base/rel resolved (symlinks followed); raises InvalidRequest unless it is
    strictly inside base resolved."""
    root = Path(base).resolve()
    if os.path.isabs(rel):
        raise InvalidRequest(f"{what} {rel[:120]!r} is absolute: it must lie inside {root}")
    path = (root / rel).resolve()
    if path == root or not path.is_relative_to(root):
        raise InvalidRequest(f"{what} {rel[:120]!r} leads to {str(path)[:200]}, outside {root}: refused")
    return str(path)


def child(base: str, name: str, what: str = "job folder") -> str:
    """The folder base/name for an id name, never a symlink: safe to rmtree."""
    check_id(name, what)
    path = os.path.join(str(Path(base).resolve()), name)
    if os.path.islink(path):
        raise InvalidRequest(f"{what} {path} is a symlink: refused")
    return path


def volume_folder(mountpoint: object) -> str:
    """A local volume's folder as Docker reports it: absolute and not a symlink."""
    if not isinstance(mountpoint, str) or not os.path.isabs(mountpoint) or _CONTROL_RE.search(mountpoint):
        raise _fail("volume folder", mountpoint, "is not an absolute path")
    if os.path.islink(mountpoint):
        raise InvalidRequest(f"volume folder {mountpoint} is a symlink: refused")
    return mountpoint
