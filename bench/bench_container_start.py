#!/usr/bin/env python3
"""Container start overhead: `docker run --rm IMAGE true` on a netplugin
network against Docker's own bridge driver, measured in the same run.

A daemon is started on /run/docker/plugins/npbench.sock, so Docker knows the
driver as 'npbench'. Three networks are compared:

  np       docker network create -d npbench --ipam-driver npbench --subnet 10.X.0.0/24 -o vlan=39NN
  bridge   docker network create -d bridge --subnet 10.Y.0.0/24   (user-defined: the baseline)
  default  Docker's default 'bridge' network                        (also reported)

The runs are PAIRED: each round runs one container on each network, the
order rotating from round to round, so slow spells of this noisy machine
hit every network alike. Reported: the median wall time of each, and the
median over rounds of the per-round ratio np/bridge (the issue's target is
<= 1.10; reported, not asserted).

The plugin's share: the daemon logs one line per protocol call with its
handler time (`<Method> ... status=200 ms=...`). The lines written during each
np run are that container's calls; their ms are summed for the start
(RequestAddress, CreateEndpoint, Join, ...) and for the whole run (with
Leave, DeleteEndpoint, ReleaseAddress: `docker run --rm` waits for the
removal), and the median per container is reported. The handler time leaves
out the unix-socket HTTP round trip and Docker's own work.

    sudo /tmp/venv/bin/python bench/bench_container_start.py [--runs 20] [--no-default-bridge] [--json]
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

START_CALLS = ("IpamDriver.RequestAddress", "NetworkDriver.CreateEndpoint", "NetworkDriver.Join",
               "NetworkDriver.ProgramExternalConnectivity", "NetworkDriver.EndpointOperInfo")
STOP_CALLS = ("NetworkDriver.RevokeExternalConnectivity", "NetworkDriver.Leave", "NetworkDriver.DeleteEndpoint",
              "IpamDriver.ReleaseAddress")


def parse_args(argv=None):
    p = C.parser(__doc__)
    p.add_argument("--runs", type=int, default=20, help="timed containers per network (default 20)")
    p.add_argument("--warmup", type=int, default=2, help="untimed containers per network first (default 2, at least 1)")
    p.add_argument("--image", default=C.IMAGE, help=f"image (default {C.IMAGE})")
    p.add_argument("--no-default-bridge", action="store_true", help="skip Docker's default bridge network")
    p.add_argument("--max-failures", type=int, default=3,
                   help="failed docker runs (e.g. OVS timeouts on a loaded machine) counted, their rounds left out, "
                        "before the run is declared broken (default 3)")
    return C.parse(p, argv, daemon_src=True, keep_log="keep the daemon log and print its path")


def docker_run(name: str, network: str, image: str, label: str) -> float:
    t0 = time.perf_counter()
    C.docker("run", "--rm", "--name", name, "--label", label, "--network", network, image, "true", timeout=120)
    return time.perf_counter() - t0


def cleanup_docker(label: str, networks: list[str]) -> None:
    ids = C.docker("ps", "-aq", "--filter", f"label={label}", check=False).stdout.split()
    if ids:
        C.docker("rm", "-f", *ids, check=False)
    for net in networks:
        if C.docker("network", "inspect", net, check=False).returncode == 0:
            C.docker("network", "rm", net, timeout=120)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = C.Out(args.json)
    info = C.machine()
    rtag = C.tag()
    label = f"npbench={rtag}"
    a, b = C.pick_octets(2)
    np_subnet, br_subnet = f"10.{a}.0.0/24", f"10.{b}.0.0/24"
    vlan = C.pick_vlan()
    np_net, br_net = f"npbench-np-{rtag}", f"npbench-br-{rtag}"
    arms = ["np", "bridge"] + ([] if args.no_default_bridge else ["default"])
    net_of = {"np": np_net, "bridge": br_net, "default": "bridge"}
    logdir = Path(tempfile.mkdtemp(prefix="npbench-start-"))
    daemon = C.Daemon(logdir / "netplugin.log", src=args.daemon_src)
    result: dict = {"benchmark": "container_start", "machine": info,
                    "command": " ".join([sys.executable] + sys.argv),
                    "settings": {"runs": args.runs, "warmup": args.warmup, "image": args.image, "arms": arms,
                                 "np_network": f"-d {C.DRIVER} --ipam-driver {C.DRIVER} --subnet {np_subnet} "
                                               f"-o vlan={vlan}",
                                 "bridge_network": f"-d bridge --subnet {br_subnet}",
                                 "etcd_prefix": daemon.prefix, "host_id": daemon.host_id,
                                 "docker_client": C.DOCKER,
                                 "daemon_src": args.daemon_src or "installed package"}}
    state = {"finished": False}
    with C.Cleanup(out) as cleanup:
        cleanup.add("remove the daemon log", lambda: C.drop_log(logdir, args.keep_log, state["finished"], out))
        cleanup.add("delete the etcd prefix", lambda: C.etcd_delete_prefix(daemon.prefix + "/"))
        cleanup.add("remove bridge npbench0", C.remove_bridge)
        cleanup.add("stop the daemon", daemon.stop)
        C.docker("image", "inspect", args.image)
        out.progress(f"starting the daemon (log {daemon.log_path})")
        daemon.start()
        result["settings"]["daemon_package"] = daemon.package
        daemon.wait_bridge()
        # containers and networks go while the daemon still answers
        cleanup.add("remove the containers and networks", lambda: cleanup_docker(label, [np_net, br_net]))
        C.docker("network", "create", "-d", C.DRIVER, "--ipam-driver", C.DRIVER, "--subnet", np_subnet,
                 "-o", f"vlan={vlan}", "--label", label, np_net)
        C.docker("network", "create", "-d", "bridge", "--subnet", br_subnet, "--label", label, br_net)
        out.progress(f"networks {np_net} ({np_subnet}, vlan {vlan}) and {br_net} ({br_subnet})")

        for i in range(max(1, args.warmup)):
            for arm in list(arms):
                try:
                    docker_run(f"npbench-{rtag}-warm-{arm}-{i}", net_of[arm], args.image, label)
                except RuntimeError as exc:
                    if arm != "default":
                        raise
                    # The default bridge is only reported; another suite may have broken it
                    # (e.g. deleted docker0). Carry on with the paired np/bridge comparison.
                    arms.remove("default")
                    result["default_bridge_unavailable"] = str(exc)[-300:]
                    out.progress(f"WARNING: the default bridge network fails, leaving it out: {str(exc)[-200:]}")
        result["settings"]["arms"] = arms

        rounds: list[dict] = []         # {"times": {arm: s}, "np_mark": log offset, "failed": str | None}
        failures: list[str] = []
        t_all = time.monotonic()
        for i in range(args.runs):
            order = arms[i % len(arms):] + arms[:i % len(arms)]
            rnd = {"times": {}, "np_mark": None, "failed": None}
            for arm in order:
                if arm == "np":
                    rnd["np_mark"] = C.log_size(daemon.log_path)
                name = f"npbench-{rtag}-{arm}-{i}"
                try:
                    rnd["times"][arm] = docker_run(name, net_of[arm], args.image, label)
                except RuntimeError as exc:
                    # counted and reported; the whole round leaves the paired figures
                    rnd["failed"] = f"{arm}: {str(exc)[-400:]}"
                    failures.append(rnd["failed"])
                    out.progress(f"WARNING: round {i + 1}, {arm} failed: {str(exc)[-200:]}")
                    C.docker("rm", "-f", name, check=False)
                    if len(failures) > args.max_failures:
                        raise RuntimeError(f"more than {args.max_failures} docker runs failed; last: {exc}") from None
            rounds.append(rnd)
            good = [r for r in rounds if not r["failed"]]
            if (i + 1) % 5 == 0 and good:
                out.progress(f"round {i + 1}/{args.runs}: " +
                             ", ".join(f"{arm} {C.median([r['times'][arm] for r in good]):.3f} s" for arm in arms))
        result["elapsed_s"] = C.rnd(time.monotonic() - t_all, 1)
        result["failed_rounds"] = len(failures)
        result["failures"] = failures[:10]
        time.sleep(1.0)   # let any late teardown call reach the log
        good = [r for r in rounds if not r["failed"]]
        if not good:
            raise RuntimeError("no round completed")
        times = {arm: [r["times"][arm] for r in good] for arm in arms}

        # the plugin's share, per np container: the log lines written from the start of
        # its run to the start of the next np run (the bridge runs make no plugin calls)
        end = C.log_size(daemon.log_path)
        marks = [r["np_mark"] for r in rounds] + [end]
        per_run = []
        method_ms: dict[str, list[float]] = defaultdict(list)
        non200 = 0
        for k, r in enumerate(rounds):
            calls = C.parse_calls(C.read_from(daemon.log_path, marks[k], marks[k + 1]))
            non200 += sum(1 for c in calls if c["status"] != 200)
            if r["failed"]:
                continue
            start = sum(c["ms"] for c in calls if c["method"] in START_CALLS)
            total = sum(c["ms"] for c in calls)
            per_run.append({"start_ms": start, "total_ms": total, "calls": [c["method"] for c in calls]})
            for c in calls:
                method_ms[c["method"]].append(c["ms"])
        seen = sorted({m for r in per_run for m in r["calls"]})
        result["wall_s"] = {arm: {"median": C.rnd(C.median(t), 4), "p10": C.rnd(C.pct(t, 10), 4),
                                  "p90": C.rnd(C.pct(t, 90), 4), "all": [C.rnd(x, 4) for x in t]}
                            for arm, t in times.items()}
        ratios = [n / br for n, br in zip(times["np"], times["bridge"])]
        result["ratio_np_over_bridge"] = {"median_of_pairs": C.rnd(C.median(ratios), 3),
                                          "of_medians": C.rnd(C.median(times["np"]) / C.median(times["bridge"]), 3),
                                          "pairs": [C.rnd(x, 3) for x in ratios], "target": 1.10}
        if "default" in times:
            rd = [n / d for n, d in zip(times["np"], times["default"])]
            result["ratio_np_over_default"] = {"median_of_pairs": C.rnd(C.median(rd), 3)}
            rb = [br / d for br, d in zip(times["bridge"], times["default"])]
            result["ratio_bridge_over_default"] = {"median_of_pairs": C.rnd(C.median(rb), 3)}
        result["plugin_share"] = {
            "start_ms_median": C.rnd(C.median([r["start_ms"] for r in per_run]), 2),
            "total_ms_median": C.rnd(C.median([r["total_ms"] for r in per_run]), 2),
            "calls_per_container": {m: sum(r["calls"].count(m) for r in per_run) / max(1, len(per_run))
                                    for m in seen},
            "method_ms_median": {m: C.rnd(C.median(v), 2) for m, v in sorted(method_ms.items())},
            "method_ms_p90": {m: C.rnd(C.pct(v, 90), 2) for m, v in sorted(method_ms.items())},
            "non_200_replies": non200,
        }
        result["np_minus_bridge_ms_median_of_pairs"] = C.rnd(
            1000 * C.median([n - br for n, br in zip(times["np"], times["bridge"])]), 1)
        left_ports = [name for name, ext in C.bridge_ports() if "np-endpoint" in ext]
        left_keys = C.etcd_keys(daemon.prefix + "/net-endpoints/")
        result["left_after_runs"] = {"ovs_ports_with_np_endpoint": len(left_ports), "endpoint_keys": len(left_keys),
                                     **C.endpoint_flows()}
        result["machine"]["loadavg_end"] = C._loadavg()
        state["finished"] = True
    result["cleanup_failures"] = cleanup.failures
    report(out, result)
    out.result(result)
    return 1 if cleanup.failures else 0


def report(out: C.Out, r: dict) -> None:
    out.say(f"container start  ({C.machine_line(r['machine'])})")
    if r["settings"].get("daemon_src", "installed package") != "installed package":
        out.say(f"daemon run from {r['settings']['daemon_src']} (not the installed package): "
                f"{r['settings'].get('daemon_package')}")
    if r.get("default_bridge_unavailable"):
        out.say(f"default bridge left out, it failed: {r['default_bridge_unavailable']}")
    out.say(f"docker run --rm {r['settings']['image']} true, {r['settings']['runs']} paired rounds, "
            f"order rotating; np = {r['settings']['np_network']}")
    if r["failed_rounds"]:
        out.say(f"{r['failed_rounds']} round(s) left out, a docker run failed; first: {r['failures'][0][:300]}")
    rows = [[arm, w["median"], w["p10"], w["p90"]] for arm, w in r["wall_s"].items()]
    out.say(C.table(["network", "median s", "p10 s", "p90 s"], rows))
    rr = r["ratio_np_over_bridge"]
    out.say(f"np / bridge: median of per-round ratios {rr['median_of_pairs']} (ratio of medians "
            f"{rr['of_medians']}; target <= {rr['target']}); np - bridge median of pairs "
            f"{r['np_minus_bridge_ms_median_of_pairs']} ms")
    if "ratio_np_over_default" in r:
        out.say(f"np / default bridge: {r['ratio_np_over_default']['median_of_pairs']}; "
                f"bridge / default bridge: {r['ratio_bridge_over_default']['median_of_pairs']}")
    ps = r["plugin_share"]
    out.say(f"plugin handler time per container (median): start calls {ps['start_ms_median']} ms, "
            f"all calls of the run {ps['total_ms_median']} ms; non-200 replies {ps['non_200_replies']}")
    rows = [[m, ps["calls_per_container"].get(m), ps["method_ms_median"].get(m), ps["method_ms_p90"].get(m)]
            for m in ps["method_ms_median"]]
    out.say(C.table(["call", "per container", "median ms", "p90 ms"], rows))
    left = r["left_after_runs"]
    out.say(f"left after the runs: {left['ovs_ports_with_np_endpoint']} OVS ports with np-endpoint, "
            f"{left['endpoint_keys']} endpoint keys, {left['flows_with_endpoint_cookie']} endpoint flows, "
            f"{left['meters']} meters")
    C.say_cleanup_failures(out, r)


if __name__ == "__main__":
    C.exit_with(main)
