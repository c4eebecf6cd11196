"""Point in time from a physical backup: the restore job's physical steps
(physical_restore.py) prepare the chain and start a fresh server; then a
replay container of the job (tools image, on the job's network, its limits,
the backup volume read-only) pipes the archived binlogs into that server,
the WHOLE server (a physical backup is of every schema), and takes the
restored schema's checksums after it. A failed replay fails the job, whose
physical steps then remove the server and its data volume: nothing is left
half-replayed.
"""

from __future__ import annotations

import contextlib
import os

from . import jobscript
from . import resources as lim
from .model import FAILED, JobEnded
from .physical_jobs import PhysicalSteps
from .pitr import replay_files, replay_result

LABEL_JOB = "netplugin.backup.job"
LABEL_KIND = "netplugin.backup.kind"

SCRIPT = r"""#!/bin/bash
# drctl point-in-time replay into a restored server. Written by drctl's runner.
set -uo pipefail
umask 077
export TZ=UTC
OUT=/job/out
CNF=/run/drctl/client.cnf
# shellcheck disable=SC1091
source /job/params
errtail() { [[ -s $1 ]] && grep -v -e '^-*$' "$1" | tail -n 3 | tr '\n' ' '; }
fail() { printf '%s\n' "$1" >"$OUT/error"; printf 'drctl replay: FAILED: %s\n' "$1" >&2; exit 1; }
SQL=(mariadb "--defaults-file=$CNF" "--host=$DB_HOST" "--port=$DB_PORT" --batch --skip-column-names
    --connect-timeout=10 --default-character-set=utf8mb4)
mapfile -t RARGV </job/replay.argv
printf 'drctl replay: %s\n' "${RARGV[*]:1}" >&2
(cd "$REPLAY_DIR" && exec "${RARGV[@]}") 2>"$OUT/replay.err" \
    | "${SQL[@]}" --max-allowed-packet=1G 2>"$OUT/replay_load.err"
st=("${PIPESTATUS[@]}")
printf 'decode=%s apply=%s\n' "${st[0]}" "${st[1]}" >"$OUT/replay_status"
[[ ${st[0]} == 0 && ${st[1]} == 0 ]] \
    || fail "the binlog replay failed ($(<"$OUT/replay_status")): $(errtail "$OUT/replay.err")\
$(errtail "$OUT/replay_load.err")"
q=$(</job/bin/checksum-gen.sql)
gen=$("${SQL[@]}" --raw -e "${q//@SCHEMA@/$DATABASE}" 2>"$OUT/checksum.err") \
    || fail "cannot list the tables of $DATABASE: $(errtail "$OUT/checksum.err")"
{
    echo "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ;"
    echo "START TRANSACTION WITH CONSISTENT SNAPSHOT;"
    printf '%s\n' "$gen"
    echo "COMMIT;"
} | "${SQL[@]}" "$DATABASE" >"$OUT/checksums.replayed" 2>"$OUT/checksum.err" \
    || fail "checksums after the replay failed: $(errtail "$OUT/checksum.err")"
echo ok >"$OUT/done"
"""


class ReplayAfter(PhysicalSteps):
    """A physical restore's steps, then the replay into the server they started."""

    def __init__(self, runner, inner):
        self.r = runner
        self.inner = inner

    def prepare(self, ctx) -> None:
        self.inner.prepare(ctx)

    def started(self, ctx) -> None:
        self.inner.started(ctx)

    def watch(self, ctx) -> None:
        self.inner.watch(ctx)

    def ended(self, ctx, state: str) -> None:
        self.inner.ended(ctx, state)

    def verify(self, ctx) -> dict:
        result = self.inner.verify(ctx)
        server = result.get("server") or {}
        ip, port = str(server.get("ip", "")), int(server.get("port") or ctx.spec.db_port)
        if not ip:
            raise JobEnded(FAILED, "the restored server has no address on the network: cannot replay")
        spec, job = ctx.spec, ctx.job
        manifest = ctx.manifest or {}
        try:
            params, argv = replay_files(self.r.store, spec, {**manifest, "database": result["database"]}, ctx.host,
                                        whole_server=True)
        except Exception as exc:  # noqa: BLE001 - InvalidRequest above all; any reason fails the job, said
            raise JobEnded(FAILED, f"point-in-time replay refused: {getattr(exc, 'message', exc)}") from None
        folder = os.path.join(ctx.job_dir, "replay")
        os.makedirs(os.path.join(folder, "bin"), mode=0o700, exist_ok=True)
        os.makedirs(os.path.join(folder, "out"), mode=0o700, exist_ok=True)
        params.update(DB_HOST=ip, DB_PORT=port, DATABASE=result["database"])
        for name, text in (("bin/replay.sh", SCRIPT), ("bin/checksum-gen.sql", jobscript.CHECKSUM_GEN_SQL),
                           ("params", jobscript.params_text(params)), ("replay.argv", argv),
                           ("go", "")):          # every limit was checked with the job's own container
            with open(os.path.join(folder, name), "w") as fh:
                fh.write(text)
        mounts = [{"Type": "volume", "Source": spec.volume, "Target": "/backup", "ReadOnly": True},
                  {"Type": "bind", "Source": folder, "Target": "/job", "ReadOnly": False},
                  {"Type": "bind", "Source": ctx.option_file, "Target": "/run/drctl/client.cnf", "ReadOnly": True}]
        d = self.r.docker
        cid, _warn = d.create(spec.image or self.r.cfg.image, name=f"drctl-{job.id}-replay",
                              command=["/bin/bash", "/job/bin/replay.sh"],
                              labels={LABEL_JOB: job.id, LABEL_KIND: "replay", "netplugin.backup.target": job.target},
                              mounts=mounts, network=spec.network, ip=None,
                              limits=lim.host_config_kwargs(ctx.limits, ctx.device), working_dir="/job",
                              environment={"DRCTL_JOB": job.id})
        try:
            d.start(cid)
            code = None
            while code is None:
                code = d.wait(cid, timeout=2.0)
                if code is None:
                    self.r._check_stop(ctx, "replaying")
        finally:
            with contextlib.suppress(Exception):
                d.stop(cid)
                d.client.remove_container(cid, force=True)
        out = _Folder(os.path.join(folder, "out"))
        if code != 0:
            raise JobEnded(FAILED, f"the replay exited with code {code}: {(out.get('error') or '').strip()}")
        result["replay"] = replay_result(spec.replay, out)
        result["message"] += f"; binlogs replayed up to {result['replay']['stop_at']}"
        return result


class _Folder:
    def __init__(self, path: str):
        self.path = path

    def get(self, name: str, /) -> str | None:
        try:
            with open(os.open(os.path.join(self.path, name), os.O_RDONLY | os.O_NOFOLLOW)) as fh:
                return fh.read()
        except OSError:
            return None
