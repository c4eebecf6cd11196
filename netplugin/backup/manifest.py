"""A backup's manifest (``<name>.manifest.json`` next to the dump): what it
holds, built from a verified job's outputs, and read and written as that
one file (through a ``.partial`` and a rename). No Docker, no etcd.

``binlog``: {"file", "pos", "gtid", "time"} of the source's binary log at
the dump's snapshot (None when the source has no binary log): where a
point-in-time replay starts. ``time`` is the SOURCE's clock (epoch seconds,
the clock its binlog events carry) while the dump's snapshot was taken under
the read lock, or just after the dump without one (a bound it is not later
than); None when it could not be read.

Format 2: the checksums and row counts come from a snapshot opened with the
dump's own, under a global read lock held for ``read_lock["held"]`` seconds,
so every transactional table's checksum describes exactly the rows in the
dump. Format 1 (older) took them around the dump (``consistent: false``
marks a table that changed meanwhile).
"""

from __future__ import annotations

import json
import os

from ..errors import InvalidRequest
from .binlog import dump_coordinates
from .model import Backup, Job, JobSpec
from .verify import Outputs

FORMAT = 2


def build(job: Job, spec: JobSpec, out: Outputs, *, name: str, file: str, size: int, sha256: str, tables: dict,
          lock: dict, stages: dict, created: float, finished: float, image: str) -> dict:
    return {
        "format": FORMAT, "name": name, "target": job.target, "database": spec.database,
        "job": job.id, "host": job.host, "created": created, "finished": finished,
        "source": {"host": spec.db_host, "port": spec.db_port, "network": spec.network},
        "server_version": (out.get("server_version") or "").strip(),
        "tool": (out.get("dump_command") or "").strip() or "mariadb-dump",
        "tool_version": (out.get("dump_version") or "").strip(),
        "image": image,
        "compression": spec.compression, "file": file, "size": size, "sha256": sha256,
        "uncompressed_size": int((out.get("raw_bytes") or "0").strip() or 0),
        "tables": tables, "rows": sum(t["rows"] for t in tables.values()),
        "checksum_snapshot": "dump" if tables else None, "read_lock": lock,
        "not_transactional": sorted(n for n, t in tables.items() if not t["transactional"]),
        "stages": stages, "limits": job.limits_applied,
        "binlog": binlog_coordinates(out),
    }


def binlog_coordinates(out: Outputs) -> dict | None:
    """{"file", "pos", "gtid"}: where the dump's snapshot stands in the source's
    binary log, as the dump wrote it (binlog.dump_coordinates); None when the
    source logs nothing or the dump's words cannot be read."""
    try:
        coords = dump_coordinates(out.get("dump_head") or "", out.get("dump_tail") or "")
    except InvalidRequest:
        return None
    if coords is not None:
        stamp = (out.get("server_time") or "").strip()
        coords["time"] = float(stamp) if stamp.isdigit() else None
    return coords


def physical(manifest: dict, *, checkpoints: str, lsn: dict, binlog: dict | None, parent: str, chain: list[str],
             point: dict, tool: str, tool_version: str) -> dict:
    """A physical backup's manifest (physical.py): a logical one's fields, plus
    the method, the LSNs and the checkpoints text an incremental needs of its
    base, the binlog coordinates of the backup point (the field PITR reads),
    the parent and the chain a restore prepares, and whether the checksums are
    exactly the backup point's."""
    return dict(manifest, method="physical", tool=tool, tool_version=tool_version, checkpoints=checkpoints,
                lsn=lsn, binlog=binlog, parent=parent, chain=chain, checksum_point=point,
                checksum_snapshot="block_commit" if manifest.get("tables") else None)


def catalog_record(manifest: dict, target: str, volume: str, manifest_path: str, host: str) -> Backup:
    """The catalog's record of the backup a manifest describes."""
    return Backup(name=manifest["name"], target=target, database=manifest["database"], volume=volume,
                  path=manifest["file"], manifest_path=manifest_path, size=manifest["size"],
                  sha256=manifest["sha256"], created=manifest["created"], host=host, job=manifest["job"],
                  binlog=manifest.get("binlog"),
                  compression=manifest["compression"], server_version=manifest.get("server_version", ""),
                  tables=len(manifest.get("tables") or {}), rows=manifest.get("rows", 0),
                  method=manifest.get("method") or "logical", parent=manifest.get("parent") or "")


def summary(manifest: dict) -> dict:
    """What a backup job's result says of its backup."""
    return {"backup": manifest["name"], "file": manifest["file"], "size": manifest["size"],
            "sha256": manifest["sha256"], "tables": len(manifest.get("tables") or {}),
            "rows": manifest.get("rows", 0), "uncompressed_size": manifest.get("uncompressed_size", 0),
            "not_transactional": manifest.get("not_transactional", [])}


def write(path: str, manifest: dict) -> None:
    """Write it as path.partial (mode 600), fsync, then rename to path."""
    with open(os.open(path + ".partial", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(path + ".partial", path)


def read(path: str) -> dict:
    """Raises OSError or ValueError when it cannot be read."""
    with open(path) as fh:
        return json.load(fh)
