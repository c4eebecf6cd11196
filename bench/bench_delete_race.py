#!/usr/bin/env python3
"""``netctl network rm`` racing container starts from both rig hosts, full
size (issue #14: 50 rounds x 20 starts per host; the CI ring runs 5 x 4 in
tests/multihost/test_delete_race.py). Prints, per round and in total, who won
(the delete, or the starts and a refused delete), how many starts failed, the
round's time, and every orphaned endpoint or address held twice found. It
prints figures only; the exit status is 1 when an invariant was broken.

    sudo .venv/bin/python bench/bench_delete_race.py [--rounds 50] [--starts 20] [--keep-rig]
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # the repo root, for tests.*

from tests.harness import rig as rigkit
from tests.harness.etcd import ETCD
from tests.multihost.conftest import Rig
from tests.multihost.delete_race import one_round


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--starts", type=int, default=20, help="container starts per host and round")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--keep-rig", action="store_true")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_delete_race: must run as root")
        return 1
    lock = rigkit.lock(600)
    prefix = "/netplugin/rig-bench-" + secrets.token_hex(4)
    subprocess.run(["bash", str(rigkit.RIG), "start", "--python", sys.executable, "--etcd-endpoints", ETCD,
                    "--etcd-prefix", prefix], check=True, timeout=300)
    rng = random.Random(args.seed)
    broken = 0
    try:
        rig = Rig(rigkit.rig_env(), ETCD, prefix)
        rig.clean()
        rows = []
        for n in range(args.rounds):
            r = one_round(rig, args.starts, rng)
            rows.append(r)
            broken += len(r.problems)
            print(f"round {n + 1:3d}: {'deleted' if r.deleted else 'refused'}  started {r.started:3d}  "
                  f"failed {r.failed_starts:3d}  {r.seconds:6.2f} s  problems {len(r.problems)}"
                  + (f"  e.g. {r.problems[0]}" if r.problems else ""), flush=True)
        print(f"\n{args.rounds} rounds x {args.starts} starts per host: deleted in "
              f"{sum(r.deleted for r in rows)}, refused in {sum(not r.deleted for r in rows)}; "
              f"{sum(r.started for r in rows)} endpoints made, {sum(r.failed_starts for r in rows)} starts refused; "
              f"median round {statistics.median(r.seconds for r in rows):.2f} s; "
              f"orphaned endpoints or addresses held twice: {broken}")
    finally:
        if not args.keep_rig:
            subprocess.run(["bash", str(rigkit.RIG), "stop"], check=False, timeout=300)
        lock.close()
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
