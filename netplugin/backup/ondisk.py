"""Reading back what a job wrote: the dump file ON DISK is hashed and
test-decompressed before its backup is catalogued, and the newest backup is
re-hashed before retention deletes older ones. What a pipe reported while
writing is not proof that the disk holds it.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import subprocess

from . import manifest as manifests
from .model import FAILED, JobEnded

CHUNK = 1024 * 1024
ZSTD = "/usr/bin/zstd"          # the project's zstd (Debian's); never through a shell


def sha256_of(path: str) -> tuple[int, str]:
    """(size, sha256) of the file as read from disk now; raises OSError."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(CHUNK)
            if not chunk:
                break
            size += len(chunk)
            h.update(chunk)
    return size, h.hexdigest()


def test_decompress(path: str, compression: str, timeout: float = 3600) -> str | None:
    """None when the whole file decompresses; else why not."""
    if compression == "gzip":
        try:
            with gzip.open(path, "rb") as fh:
                while fh.read(CHUNK):
                    pass
        except (OSError, EOFError, ValueError) as exc:
            return f"gzip: {exc}"
        return None
    try:
        proc = subprocess.run([ZSTD, "-t", "-q", "--", path], capture_output=True, text=True, timeout=timeout,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"zstd -t could not run: {exc}"
    if proc.returncode != 0:
        return f"zstd -t: {(proc.stderr or proc.stdout).strip()[-300:] or f'exit code {proc.returncode}'}"
    return None


def check_written(path: str, shown: str, compression: str, recorded_sha: str) -> tuple[int, str]:
    """The file on disk has the sha256 the job recorded and decompresses whole;
    returns (size, sha256) as read; raises JobEnded(FAILED, why) otherwise."""
    try:
        size, sha = sha256_of(path)
    except OSError as exc:
        raise JobEnded(FAILED, f"verification: {shown} cannot be read back: {exc.strerror}") from None
    if sha != recorded_sha:
        raise JobEnded(FAILED, f"verification: {shown} read back from disk has sha256 {sha}, but {recorded_sha} "
                               "was written: the disk does not hold what the dump produced")
    why = test_decompress(path, compression)
    if why is not None:
        raise JobEnded(FAILED, f"verification: {shown} does not decompress: {why}")
    return size, sha


def intact(path: str, size: int, sha256: str) -> str | None:
    """None when the file has that size and sha256; else what differs."""
    try:
        got = os.path.getsize(path)
        if got != size:
            return f"size {got}, catalog {size}"
        _, sha = sha256_of(path)
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    if sha != sha256:
        return f"sha256 {sha}, catalog {sha256}"
    return None


def volume_full(path: str, reserve: int = 64 * 1024) -> bool:
    """Whether the file system of path has (nearly) no room left."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize <= reserve


ENOSPC = f"ENOSPC ({os.strerror(errno.ENOSPC)})"


def publish(partial: str, final: str, manifest_path: str, manifest: dict, volume: str) -> None:
    """Make a finished backup exist: its manifest written, its file moved from
    ``partial`` to ``final``, and their folder synced, in that order. A full
    volume is a failed job that says so."""
    try:
        manifests.write(manifest_path, manifest)
    except OSError as exc:
        full = f"the backup volume {volume} is full: {ENOSPC}; " if exc.errno == errno.ENOSPC else ""
        raise JobEnded(FAILED, f"{full}the manifest cannot be written: {exc.strerror}") from None
    os.replace(partial, final)
    dfd = os.open(os.path.dirname(manifest_path), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
