"""The binlog collector job (``drctl binlog start``): a container of the tools
image on the server's network, under the agent and with a job's limits, that
runs ``mariadb-binlog --read-from-remote-server --raw --stop-never`` into
``<volume>/<target>/binlog/`` until it is stopped (``drctl binlog stop``:
a cancel), and the catalogue of the files it completes.

Resume: the job starts from the newest file already in the archive folder,
fetched again whole from its start (``--raw`` rewrites it), so a collector
killed mid-event (kill -9 of its container or of the agent) leaves nothing
partial behind once the next one has run; from the server's oldest log when
the folder is empty. Older files ended with their rotate event: complete.

Catalogue: the script decodes each complete file once (``TZ=UTC
mariadb-binlog``) and leaves its first and last event headers and its event
count in the job's ``out/idx``; the runner checks them against the file (its
size is the last event's end position, its last event rotates to the next
file), hashes it and records it in the store. A file that fails a check is
not catalogued, so a restore across it is refused as a gap.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil

from ..errors import InvalidRequest, NetpluginError
from . import binlog, jobscript
from .binlog import BinlogFile
from .containers import docker_message, is_docker_error, is_not_found
from .model import BINLOG, CANCELLED, FAILED, RESTORE, STARTING, Job, JobEnded
from .pitr_physical import ReplayAfter
from .runner import Runner, _Ctx, _open

log = logging.getLogger(__name__)

COLLECTOR_ID_BASE = 3_000_000_000      # the collector's replica server id: this plus a hash of its target

SCRIPT = r"""#!/bin/bash
# drctl binlog collector. Written by drctl's runner; runs in the job container.
set -uo pipefail
umask 077
export TZ=UTC
OUT=/job/out
CNF=/run/drctl/client.cnf
# shellcheck disable=SC1091
source /job/params
log() { printf '%s drctl binlog: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
fail() { printf '%s\n' "$1" >"$OUT/error"; log "FAILED: $1"; exit "${2:-1}"; }
errtail() { [[ -s $1 ]] && grep -v -e '^-*$' "$1" | tail -n 3 | tr '\n' ' '; }
n=0
until [[ -e /job/go ]]; do
    [[ -e /job/abort ]] && fail "stopped by the runner before the start" 3
    ((n++ < 6000)) || fail "the runner did not open the gate within 10 minutes" 3
    sleep 0.1
done
SQL=(mariadb "--defaults-file=$CNF" "--host=$DB_HOST" "--port=$DB_PORT" --batch --skip-column-names
    --connect-timeout=10)
logs=$("${SQL[@]}" -e 'SHOW BINARY LOGS' 2>"$OUT/connect.err") \
    || fail "cannot list the binary logs of $DB_HOST:$DB_PORT (the server needs log_bin; the user needs the \
BINLOG MONITOR and REPLICATION SLAVE privileges): $(errtail "$OUT/connect.err")" 2
NAME_RE='^[A-Za-z0-9][A-Za-z0-9_-]{0,62}\.[0-9]{6,9}$'
first=$(head -n 1 <<<"$logs" | cut -f 1)
[[ $first =~ $NAME_RE ]] || fail "$DB_HOST:$DB_PORT has no binary log (or an unexpected name: ${first:0:80})" 2
START=${START:-$first}
cut -f 1 <<<"$logs" | grep -qxF -- "$START" \
    || fail "the server no longer has $START (its oldest log is $first): the events from $START on that are \
not archived are lost; the archive has a gap there" 2
base=${START%.*}
mkdir -p "$ARCH" "$OUT/idx"
printf '%s\n' "$START" >"$OUT/start"
log "archiving the binary log of $DB_HOST:$DB_PORT from $START (whole) into ${ARCH#/backup/}"
mariadb-binlog "--defaults-file=$CNF" "--host=$DB_HOST" "--port=$DB_PORT" --read-from-remote-server --raw \
    --stop-never "--stop-never-slave-server-id=$SERVER_ID" "--result-file=$ARCH/" "$START" \
    2>"$OUT/collector.err" &
pid=$!
trap 'kill "$pid" 2>/dev/null; exit 143' TERM INT
# index: each complete file (every one but the newest) not known yet, decoded once.
index() {
    local names f tmp
    mapfile -t names < <(ls -1 "$ARCH" 2>/dev/null | grep -E "^${base}\.[0-9]{6,9}\$" | sort)
    ((${#names[@]} > 1)) || return 0
    for f in "${names[@]:0:${#names[@]}-1}"; do
        [[ -e $OUT/idx/$f.done ]] && continue
        grep -qxF -- "$f" /job/known 2>/dev/null && continue
        tmp=/tmp/drctl-idx
        mariadb-binlog "$ARCH/$f" 2>"$OUT/idx/$f.err" | grep -E '^#[0-9]{6} +[0-9]' >"$tmp"
        { head -n 1 "$tmp"; tail -n 1 "$tmp"; } >"$OUT/idx/$f.events"
        wc -l <"$tmp" >"$OUT/idx/$f.count"
        rm -f "$tmp"
        : >"$OUT/idx/$f.done"
    done
}
while kill -0 "$pid" 2>/dev/null; do
    index
    sleep 1
done
wait "$pid"
st=$?
index
fail "mariadb-binlog stopped (exit code $st): $(errtail "$OUT/collector.err")"
"""


def collector_server_id(target: str) -> int:
    """A replica server id for target's collector, stable across restarts and
    unlike any real server's (a second connection with the same id makes the
    server drop the first)."""
    return COLLECTOR_ID_BASE + int.from_bytes(hashlib.sha256(target.encode()).digest()[:3], "big")


def archive_rel(target: str) -> str:
    return f"{target}/binlog"


class BinlogRunner(Runner):
    """The runner of every job; collector jobs (kind ``binlog``) run here, others as Runner runs them."""

    def __init__(self, *args, poll: float = 1.0, **kw):
        super().__init__(*args, **kw)
        self.poll = poll        # seconds between two looks at the collector's container and its index

    def run(self, job: Job) -> Job:
        if job.kind != BINLOG:
            return super().run(job)
        refused = self._refuse(job)
        if refused is not None:
            return refused

        def steps(ctx: _Ctx) -> None:
            self._prepare_collector(ctx)
            self._create_and_start(ctx)
            self._follow(ctx)

        return self._to_the_end(_Ctx(job), steps, self._unexpected(job))

    def adopt(self, job: Job) -> Job:
        if job.kind != BINLOG:
            return super().adopt(job)
        refused = self._refuse(job)
        if refused is not None:
            return refused

        def steps(ctx: _Ctx) -> None:
            self._locate(ctx)
            if job.state == STARTING:
                raise JobEnded(FAILED, "the agent stopped while the collector was starting: start it again")
            try:
                self.docker.inspect(ctx.container)
            except Exception as exc:  # Docker's own error types; only NotFound is an answer
                if is_not_found(exc):
                    raise JobEnded(FAILED, f"its container {ctx.container[:12]} is gone: start the collector "
                                           "again ('drctl binlog start'), it resumes from the archive") from None
                raise
            ctx.gate_open = True
            self._follow(ctx)

        return self._to_the_end(_Ctx(job), steps, self._unexpected(job))

    @staticmethod
    def _unexpected(job: Job):
        def say(exc: Exception) -> str:
            if is_docker_error(exc):
                return f"Docker refused: {docker_message(exc)}"
            log.exception("collector %s: unexpected error", job.id)
            return f"internal error in the collector's runner: {type(exc).__name__}: {exc}"
        return say

    def _finish(self, ctx: _Ctx) -> None:
        """A physical restore with a replay: the replay after the physical steps' server is up."""
        steps = getattr(ctx, "physical", None)
        if ctx.job.kind == RESTORE and ctx.spec.replay and steps is not None and not isinstance(steps, ReplayAfter):
            ctx.physical = ReplayAfter(self, steps)
        super()._finish(ctx)

    # -- preparing ------------------------------------------------------------------------------
    def _prepare_collector(self, ctx: _Ctx) -> None:
        spec, job = ctx.spec, ctx.job
        self._locate(ctx)
        image = spec.image or self.cfg.image
        if not self.docker.has_image(image):
            raise JobEnded(FAILED, f"image {image} is not on host {job.host}: build it with scripts/make-db-images.sh")
        if not self.docker.has_network(spec.network):
            raise JobEnded(FAILED, f"network {spec.network} does not exist on host {job.host}")
        self._check_option_file(ctx)
        if ctx.limits.disk_limited():
            try:
                ctx.device = self.env.device(ctx.volume_path)
            except InvalidRequest as exc:
                raise JobEnded(FAILED, f"disk limits cannot be applied: {exc.message}") from None
        arch = ctx.host(archive_rel(job.target))
        if os.path.islink(arch):
            raise JobEnded(FAILED, f"{archive_rel(job.target)} in volume {spec.volume} is a symlink: refused")
        names = sorted(os.listdir(arch)) if os.path.isdir(arch) else []
        known = {r.file for r in self.store.binlogs(job.target)}
        start = ""
        files = [n for n in names if _is_binlog(n)]
        if files:
            start = binlog.resume_file(files, files[0])
        params = {"DB_HOST": spec.db_host, "DB_PORT": spec.db_port, "START": start,
                  "ARCH": f"/backup/{archive_rel(job.target)}", "SERVER_ID": collector_server_id(job.target)}
        if os.path.exists(ctx.job_dir):
            shutil.rmtree(ctx.job_dir)
        os.makedirs(os.path.join(ctx.job_dir, "bin"), mode=0o700)
        os.makedirs(os.path.join(ctx.job_dir, "out", "idx"), mode=0o700)
        for name, text in (("bin/job.sh", SCRIPT), ("params", jobscript.params_text(params)),
                           ("known", "".join(f + "\n" for f in sorted(known)))):
            with open(os.path.join(ctx.job_dir, name), "w") as fh:
                fh.write(text)
        self._record(ctx, result={"resumed_from": start or None, "archive": archive_rel(job.target)})

    # -- running ----------------------------------------------------------------------------------
    def _follow(self, ctx: _Ctx) -> None:
        """Until the container stops or the job is stopped: catalogue what it completes."""
        done: set[str] = {r.file for r in self.store.binlogs(ctx.job.target)}
        try:
            while True:
                ctx.exit_code = self.docker.wait(ctx.container, timeout=self.poll)
                self._catalogue(ctx, done)
                if ctx.exit_code is not None:
                    break
                self._check_stop(ctx, "archiving")
        except JobEnded as end:
            if end.state == CANCELLED:
                end.message = f"{end.message}; {len(done)} files archived"
            raise
        self._collect(ctx)
        error = ""
        try:
            with _open(os.path.join(ctx.job_dir, "out", "error"), os.O_RDONLY, "r") as fh:
                error = fh.read().strip()
        except OSError:
            pass
        raise JobEnded(FAILED, f"the collector exited with code {ctx.exit_code}: "
                               f"{error or ('OOM-killed' if ctx.oom else 'no message')}")

    def _catalogue(self, ctx: _Ctx, done: set[str]) -> None:
        idx = os.path.join(ctx.job_dir, "out", "idx")
        try:
            ready = sorted(n[:-5] for n in os.listdir(idx) if n.endswith(".done"))
        except OSError:
            return
        for name in ready:
            if name in done:
                continue
            try:
                rec = self._record_of(ctx, idx, name)
                self.store.add_binlog(rec)
            except (InvalidRequest, OSError, ValueError) as exc:
                why = exc.message if isinstance(exc, NetpluginError) else str(exc)
                log.warning("collector %s: %s not catalogued: %s", ctx.job.id, name[:80], why)
                done.add(name)
                self._record(ctx, progress=dict(ctx.job.progress, refused={**ctx.job.progress.get("refused", {}),
                                                                          name[:80]: why[:300]}))
                continue
            done.add(name)
            self._record(ctx, progress={**{k: v for k, v in ctx.job.progress.items() if k != "time"},
                                        "files": len(done), "last_file": name, "last_event": rec.last_time,
                                        "time": self.clock()})

    def _record_of(self, ctx: _Ctx, idx: str, name: str) -> BinlogFile:
        binlog.check_file(name)
        with _open(os.path.join(idx, f"{name}.events"), os.O_RDONLY, "r") as fh:
            events = binlog.parse_events(fh.read(4096))
        with _open(os.path.join(idx, f"{name}.count"), os.O_RDONLY, "r") as fh:
            count = int(fh.read(32).strip() or "0")
        rel = f"{archive_rel(ctx.job.target)}/{name}"
        path = ctx.host(rel)
        size = os.lstat(path).st_size
        if events.rotated_to != binlog.next_file(name):
            raise InvalidRequest(f"its last event does not rotate to {binlog.next_file(name)}: not complete")
        if events.end_pos != size:
            raise InvalidRequest(f"it has {size} bytes, its last event ends at {events.end_pos}")
        digest = hashlib.sha256()
        with _open(path, os.O_RDONLY, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        assert events.first_time is not None and events.last_time is not None  # noqa: S101 - parse_events saw events
        return binlog.check_record(BinlogFile(
            target=ctx.job.target, file=name, volume=ctx.spec.volume, path=rel, host=ctx.job.host, size=size,
            sha256=digest.hexdigest(), start_pos=binlog.FIRST_POS, end_pos=events.end_pos,
            first_time=events.first_time, last_time=events.last_time, server_id=events.server_id or 0,
            events=count, job=ctx.job.id))


def _is_binlog(name: str) -> bool:
    try:
        binlog.check_file(name)
        return True
    except InvalidRequest:
        return False
