"""The Docker Engine calls of drctl, behind one small class over docker-py's
``APIClient`` (or a fake with the same methods in unit tests), and how to
read Docker's errors.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def docker_client(url: str):
    """docker-py's client of the Engine at url, for drctl's long calls."""
    import docker
    return docker.APIClient(base_url=url, timeout=120, version="auto")


def is_docker_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith(("docker", "requests", "urllib3"))


def docker_message(exc: BaseException) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    return text.decode() if isinstance(text, bytes) else str(text)


def is_not_found(exc: BaseException) -> bool:
    return type(exc).__name__ == "NotFound" or getattr(getattr(exc, "response", None), "status_code", 0) == 404


def is_timeout(exc: BaseException) -> bool:
    names = {type(e).__name__ for e in (exc, exc.__cause__, exc.__context__) if e is not None}
    return bool(names & {"ReadTimeout", "ReadTimeoutError", "ConnectionError", "Timeout", "TimeoutError",
                         "timeout"}) or "timed out" in str(exc).lower()


class Containers:
    """Volumes, images, networks and job containers on this host's Docker."""

    def __init__(self, client):
        self.client = client          # docker.APIClient (or a fake with the same methods)

    # -- what a job needs -------------------------------------------------------------------
    def volume(self, name: str) -> dict | None:
        """docker volume inspect; None when there is no such volume."""
        try:
            return self.client.inspect_volume(name)
        except Exception as exc:  # Docker's own error types; only NotFound is an answer
            if is_not_found(exc):
                return None
            raise

    def create_volume(self, name: str) -> dict:
        return self.client.create_volume(name, driver="local", labels={"netplugin.backup.volume": "1"})

    def volume_path(self, name: str) -> str | None:
        """The host folder of a local volume; None for another driver or any error."""
        try:
            vol = self.client.inspect_volume(name)
        except Exception:  # noqa: BLE001 - no folder to offer, whatever the reason
            return None
        return vol.get("Mountpoint") if vol.get("Driver") == "local" else None

    def has_image(self, image: str) -> bool:
        return self._exists(self.client.inspect_image, image)

    def has_network(self, name: str) -> bool:
        return self._exists(self.client.inspect_network, name)

    @staticmethod
    def _exists(inspect, name: str) -> bool:
        try:
            inspect(name)
        except Exception as exc:  # Docker's own error types; only NotFound is an answer
            if is_not_found(exc):
                return False
            raise
        return True

    # -- a job container --------------------------------------------------------------------
    def create(self, image: str, *, name: str, command: list[str], labels: dict, mounts: list[dict], network: str,
               ip: str | None, limits: dict, working_dir: str, environment: dict,
               cap_add: list[str] | None = None) -> tuple[str, list[str]]:
        """A locked-down container (no capabilities but cap_add, read-only root,
        never auto-removed); returns its id and Docker's warnings."""
        d = self.client
        host_config = d.create_host_config(
            mounts=mounts, network_mode=network, auto_remove=False, restart_policy={"Name": "no"},
            cap_drop=["ALL"], cap_add=cap_add or None, security_opt=["no-new-privileges"], read_only=True,
            tmpfs={"/tmp": "rw,nosuid,nodev,size=64m"},  # noqa: S108 - the container's own private tmpfs
            log_config={"Type": "json-file", "Config": {"max-size": "10m", "max-file": "2"}},
            **limits)
        networking = None
        if ip:
            networking = d.create_networking_config({network: d.create_endpoint_config(ipv4_address=ip)})
        resp = d.create_container(image, command=command, name=name, labels=labels, host_config=host_config,
                                  networking_config=networking, user="0:0", working_dir=working_dir,
                                  environment=environment, use_config_proxy=False)
        return resp["Id"], [w for w in (resp.get("Warnings") or []) if w]

    def inspect(self, cid: str) -> dict:
        return self.client.inspect_container(cid)

    def start(self, cid: str) -> None:
        self.client.start(cid)

    def attach(self, cid: str):
        """The container's output from its start, as a stream of chunks."""
        return self.client.attach(cid, stdout=True, stderr=True, stream=True, logs=True)

    def wait(self, cid: str, timeout: float) -> int | None:
        """The exit code, or None while it still runs after timeout seconds."""
        try:
            result = self.client.wait(cid, timeout=timeout)
        except Exception as exc:  # a timeout is an answer: still running
            if not is_timeout(exc):
                raise
            return None
        return int(result.get("StatusCode", -1))

    def stop(self, cid: str) -> None:
        """Kill it if it runs, and wait a little for it to end."""
        if self.client.inspect_container(cid).get("State", {}).get("Running"):
            self.client.kill(cid)
            try:
                self.client.wait(cid, timeout=15)
            except Exception as exc:  # noqa: BLE001 - killed; its end is read afterwards
                log.debug("container %s: no end within 15 s of the kill: %s", cid[:12], exc)

    def log_tail(self, cid: str, lines: int) -> list[str]:
        """The last lines of its log; none when Docker cannot say."""
        try:
            raw = self.client.logs(cid, stdout=True, stderr=True, tail=lines)
        except Exception:  # noqa: BLE001 - the tail is best effort
            return []
        return raw.decode(errors="replace").splitlines()
