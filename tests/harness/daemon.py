"""One netplugin daemon process under test.

It runs as `python -m netplugin.daemon` in a session of its own (so its
process group, gunicorn's arbiter and worker, is stopped together), with its
settings only from NETPLUGIN_* variables, its output appended to a log file.
`start` returns once the socket answers Plugin.Activate.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from netplugin.unixhttp import call

from .etcd import etcdctl
from .proc import Failed, stop_group, tail


def settings_env(isolated: bool = True, base: dict[str, str] | None = None, **settings) -> dict[str, str]:
    """The environment for a daemon or a command-line tool: base (default the
    caller's environment) plus NETPLUGIN_<NAME> for each setting. isolated: the
    caller's NETPLUGIN_* are dropped and NETPLUGIN_CONFIG is /dev/null, so
    neither they nor /etc/netplugin/netplugin.toml can leak in."""
    env = dict(os.environ if base is None else base)
    if isolated:
        env = {k: v for k, v in env.items() if not k.startswith("NETPLUGIN_")}
        env["NETPLUGIN_CONFIG"] = "/dev/null"
    env.update({f"NETPLUGIN_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def answers(socket_path: str) -> bool:
    """Whether a network driver answers Plugin.Activate on the socket."""
    if not os.path.exists(socket_path):
        return False
    try:
        status, reply = call(socket_path, "Plugin.Activate", timeout=2)
    except OSError:
        return False
    return status == 200 and "NetworkDriver" in reply.get("Implements", [])


class Process:
    """`python -m module args` in a session of its own, with env, its output
    appended to log; stopped with its whole process group."""

    def __init__(self, module: list[str], log: Path, env: dict[str, str], cwd: str | None = None):
        self.module = module
        self.log = log
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None

    def launch(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", *self.module], env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, cwd=self.cwd)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 10) -> None:
        """SIGTERM to its process group; SIGKILL after grace seconds."""
        stop_group(self.proc, signal.SIGTERM, grace)

    def kill9(self) -> None:
        stop_group(self.proc, signal.SIGKILL)

    def tail(self, chars: int = 3000) -> str:
        return tail(self.log, chars)


class Daemon(Process):
    """A netplugin daemon on `socket`, configured by `env`, logging to `log`.

    cwd: the folder to start it in (`python -m` imports from there first)."""

    def __init__(self, socket: str, log: Path, env: dict[str, str], cwd: str | None = None):
        super().__init__(["netplugin.daemon"], log, env, cwd)
        self.socket = socket

    # -- the process ---------------------------------------------------------------------
    def start(self, within: float = 15) -> float:
        """Start it; the seconds until it answered on its socket."""
        started = time.monotonic()
        self.launch()
        assert self.proc is not None
        while time.monotonic() - started < within:
            if self.proc.poll() is not None:
                raise Failed(f"netplugin exited at start:\n{self.tail()}")
            if self.answers():
                return time.monotonic() - started
            time.sleep(0.05)
        raise Failed(f"netplugin did not listen on {self.socket} within {within:g} s:\n{self.tail()}")

    def claim_socket(self, hint: str = "") -> None:
        """Refuse when another process serves the socket; remove it when stale."""
        if self.answers():
            raise Failed(f"another process already serves {self.socket}{hint}")
        if os.path.exists(self.socket):
            os.unlink(self.socket)

    def answers(self) -> bool:
        return answers(self.socket)

    def pids(self) -> list[int]:
        """Its processes (gunicorn's arbiter and its worker): its process group."""
        assert self.proc is not None
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.getpgid(int(entry)) == self.proc.pid:
                        out.append(int(entry))
                except ProcessLookupError:
                    pass
        return out

    def dump_threads(self, settle: float = 0.5) -> None:
        """Every thread's stack into its log (SIGUSR2 to the gunicorn worker)."""
        if not self.alive():
            return
        assert self.proc is not None
        for pid in self.pids():
            # Only the arbiter's children (its worker): a command the worker runs
            # shares the group, and SIGUSR2 would kill it.
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGUSR2)
        time.sleep(settle)

    # -- talking to it ---------------------------------------------------------------------
    def call(self, method: str, body: dict | bytes | None = None, timeout: float = 30) -> tuple[int, dict]:
        return call(self.socket, method, body, timeout=timeout)

    def tool(self, module: str, *args: str, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess:
        """`python -m module args` with the daemon's settings (plus env)."""
        return subprocess.run([sys.executable, "-m", module, *args], check=False, env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout)

    def netctl(self, *args: str, env: dict[str, str] | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess:
        """netctl with the daemon's settings; the caller reads the exit status."""
        return self.tool("netplugin.cli.main", *args, env=env, timeout=timeout)

    def reconcile(self, *args: str, timeout: float = 120) -> dict:
        """One reconcile pass of this host; the parsed one-line JSON report."""
        proc = self.tool("netplugin.reconcile_cli", "--json", *args, timeout=timeout)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.strip().splitlines()
        assert len(lines) == 1, f"the report must be one line: {proc.stdout!r}"
        return json.loads(lines[0])


class Agent(Process):
    """A drctl agent (`python -m netplugin.backup.cli agent`) with env; started
    once its registration key appears in etcd."""

    def __init__(self, log: Path, env: dict[str, str], etcd: str, registration_key: str):
        super().__init__(["netplugin.backup.cli", "agent"], log, env)
        self.etcd = etcd
        self.key = registration_key

    def start(self, within: float = 20) -> None:
        self.launch()
        assert self.proc is not None
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Failed(f"drctl agent exited:\n{self.tail()}")
            if etcdctl(self.etcd, "get", self.key, "--keys-only", check=False).stdout.strip():
                return
            time.sleep(0.1)
        raise Failed(f"drctl agent did not register:\n{self.tail()}")

    def stop(self, grace: float = 15) -> None:
        super().stop(grace)
