"""Check a managed netplugin plugin's settings before ``docker plugin enable``.

The daemon inside the plugin applies netplugin's own rules at start (settings
types, and the etcd TLS and password rules of netplugin/etcd_access.py), but a
plugin that fails there only shows it in dockerd's log after enable times out.
This runs the same rules on the plugin's settings (``docker plugin inspect``),
and checks that the TLS files and the password file they name exist, found
through the plugin's mounts on this host.

    python3 packaging/managed/check_settings.py NAME

Exit 0 when the daemon would start with these settings; 1 with each problem and
what to do; 2 when the plugin cannot be inspected.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if os.path.isdir(os.path.join(REPO, "netplugin")):
    sys.path.insert(0, REPO)

PASSWORD_FLAG = "--password-file"  # noqa: S105  # a flag's name, not a password


def host_path(path: str, mounts: dict[str, str]) -> str | None:
    """Where the plugin's path is on this host, through its bind mounts; None if under none."""
    for dest in sorted(mounts, key=len, reverse=True):
        if path == dest or path.startswith(dest.rstrip("/") + "/"):
            return mounts[dest] + path[len(dest):]
    return None


def _file_problem(setting: str, path: str, mounts: dict[str, str]) -> str | None:
    found = host_path(path, mounts)
    if found is None:
        return (f"{setting} {path} is not under a folder mounted into the plugin: put the file in the "
                f"etcd-credentials mount ({', '.join(sorted(mounts)) or 'none'}) and name it there")
    if not os.path.isfile(found):
        return f"{setting} {path} is {found} on this host, and there is no such file: create it or fix the setting"
    return None


def problems(inspect: dict) -> list[str]:
    """What would stop the daemon with these plugin settings (empty: nothing)."""
    from netplugin.config import load
    from netplugin.daemon import parse_args
    from netplugin.errors import NetpluginError

    settings = inspect.get("Settings") or {}
    env = dict(item.split("=", 1) for item in settings.get("Env") or [] if "=" in item)
    mounts = {m["Destination"]: m["Source"] for m in settings.get("Mounts") or [] if m.get("Source")}
    args = [str(a) for a in settings.get("Args") or []]
    found: list[str] = []
    # The password file is read while the flags are parsed: point it at this host's copy first.
    for i, arg in enumerate(args):
        inside = args[i + 1] if arg == PASSWORD_FLAG and i + 1 < len(args) else (
            arg.split("=", 1)[1] if arg.startswith(PASSWORD_FLAG + "=") else None)
        if inside is None:
            continue
        problem = _file_problem(PASSWORD_FLAG, inside, mounts)
        if problem:
            return [problem]
        outside = host_path(inside, mounts) or inside
        args[i:i + (2 if arg == PASSWORD_FLAG else 1)] = [PASSWORD_FLAG, outside]
        break
    try:
        flags = vars(parse_args(args))
    except SystemExit:
        return [f"args {settings.get('Args')!r} are not flags the daemon takes (see the message above): "
                f"docker plugin set NAME args=... with flags of 'netplugin --help'"]
    config = flags.pop("config", None)
    overrides = {k: v for k, v in flags.items() if v is not None}
    try:
        # Nothing but the plugin's own settings: no file of this host's daemon.
        cfg = load(config or "/dev/null", env={k: v for k, v in env.items() if k.startswith("NETPLUGIN_")},
                   overrides=overrides)
    except NetpluginError as exc:
        return [exc.message]
    for setting in ("etcd_cacert", "etcd_cert", "etcd_key"):
        path = getattr(cfg, setting)
        if path:
            problem = _file_problem(f"NETPLUGIN_{setting.upper()}", path, mounts)
            if problem:
                found.append(problem)
    return found


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: check_settings.py PLUGIN-NAME", file=sys.stderr)
        return 2
    docker = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else shutil.which("docker") or "docker"
    proc = subprocess.run([docker, "plugin", "inspect", argv[0]], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"check_settings: cannot inspect plugin {argv[0]}: {proc.stderr.strip()}", file=sys.stderr)
        return 2
    found = problems(json.loads(proc.stdout)[0])
    for problem in found:
        print(f"check_settings: {problem}", file=sys.stderr)
    if not found:
        print(f"{argv[0]}: settings pass netplugin's checks")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
