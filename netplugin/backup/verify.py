"""Checking what a job recorded, with no Docker, no etcd and no files: the
outputs its script wrote in ``/job/out`` (a mapping of name to text, None
when absent), the sizes the runner measured and the manifest go in; the
tables and figures of a good result come out. A failed check raises
JobEnded(FAILED, why).
"""

from __future__ import annotations

import re
from typing import Protocol

from . import jobscript
from .model import FAILED, JobEnded

# Engines whose reads honour a consistent snapshot: their checksums describe
# exactly the rows in the dump. Others are read as they are at that moment.
TRANSACTIONAL_ENGINES = frozenset({"innodb", "rocksdb"})
_SHA256_RE = re.compile(r"[0-9a-f]{64}")



class Outputs(Protocol):
    """The job's outputs by name (a dict will do); None when absent."""

    def get(self, name: str, /) -> str | None: ...


def stages(out: Outputs, what: str) -> dict:
    """Every stage of the dump (or the load: what) exited 0 and the job
    recorded that it finished; returns the stages' exit codes."""
    status = jobscript.parse_status(out.get("status") or "")
    bad = {k: v for k, v in status.items() if v != 0}
    if not status or bad:
        raise JobEnded(FAILED, f"verification: stages of the {what} failed: {bad or 'no status recorded'}")
    if (out.get("done") or "").strip() != "ok":
        raise JobEnded(FAILED, "verification: the job did not record that it finished")
    return status


def dump_marker(out: Outputs) -> None:
    if "-- Dump completed" not in (out.get("dump_tail") or ""):
        raise JobEnded(FAILED, "verification: the dump has no completion marker")


def dump_file(out: Outputs, size: int, min_size: int) -> str:
    """The file on disk is what went through the pipe, not tiny, with a sha256
    recorded; returns the sha256."""
    streamed = int((out.get("bytes") or "-1").strip() or -1)
    if size != streamed:
        raise JobEnded(FAILED, f"verification: the file has {size} bytes but {streamed} were written")
    if size < min_size:
        raise JobEnded(FAILED, f"verification: the dump is only {size} bytes (minimum {min_size})")
    sha = (out.get("sha256") or "").split()[:1]
    if not sha or not _SHA256_RE.fullmatch(sha[0]):
        raise JobEnded(FAILED, "verification: no sha256 was recorded")
    return sha[0]


def snapshot_tables(out: Outputs, checksums: bool) -> tuple[dict, dict]:
    """Per table its engine, rows, checksum and whether the engine reads
    through the dump's snapshot; and the read lock's wait and hold times."""
    if not checksums:
        return {}, {}
    text = out.get("checksums")
    if text is None:
        raise JobEnded(FAILED, "verification: no checksums were recorded in the dump's snapshot")
    tables = {name: dict(row, transactional=row["engine"].lower() in TRANSACTIONAL_ENGINES)
              for name, row in jobscript.parse_checksums(text).items()}
    return tables, jobscript.parse_lock(out.get("lock") or "")


def restored_tables(out: Outputs, manifest: dict, checksums: bool) -> tuple[int, list[str], int]:
    """Every table of the manifest against the checksums of the loaded schema:
    (tables that match, tables that cannot be compared, rows that match)."""
    expected: dict = manifest.get("tables") or {}
    checked, unverifiable, problems = 0, [], []
    if checksums and expected:
        got = jobscript.parse_checksums(out.get("checksums.restored") or "")
        for name, want in sorted(expected.items()):
            if want.get("consistent") is False:
                # A format-1 manifest: that table's checksums were taken around the
                # dump, not in its snapshot, and differed: nothing to compare with.
                unverifiable.append(name)
                continue
            have = got.get(name)
            hint = "" if want.get("transactional", True) else \
                f" (engine {want.get('engine')} is outside the snapshot: was it written during the backup?)"
            if have is None:
                problems.append(f"table {name} is missing")
            elif have["rows"] != want["rows"]:
                problems.append(f"table {name} has {have['rows']} rows, the backup {want['rows']}{hint}")
            elif have["checksum"] != want["checksum"]:
                problems.append(f"table {name} has checksum {have['checksum']}, the backup {want['checksum']}{hint}")
            else:
                checked += 1
        extra = sorted(set(got) - set(expected))
        if extra:
            problems.append(f"tables not in the backup: {', '.join(extra)}")
    if problems:
        raise JobEnded(FAILED, "verification failed: " + "; ".join(problems))
    rows = sum(t["rows"] for n, t in expected.items() if n not in unverifiable) if checked else 0
    return checked, unverifiable, rows


def restore_warning(manifest: dict, unverifiable: list[str], checksums: bool) -> str | None:
    """Why a good restore still proves less than every table, if it does."""
    expected: dict = manifest.get("tables") or {}
    if unverifiable:
        return (f"{len(unverifiable)} of {len(expected)} tables NOT verified: {', '.join(unverifiable)} "
                "changed during that backup, whose manifest (format 1) has no checksum of the "
                "dumped rows")
    if checksums and not expected:
        return "NOT verified: the backup's manifest has no checksums (made with --no-checksums)"
    if not checksums:
        return "NOT verified: --no-checksums"
    return None
