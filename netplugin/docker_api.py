"""The Docker Engine API boundary (docker-py), for what the plugin protocol
does not say: the name of a Docker network. Connects on first use."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class DockerNames:
    def __init__(self, url: str = "unix:///var/run/docker.sock", timeout: float = 5.0):
        self.url = url
        self.timeout = timeout
        self._client = None
        self._lock = threading.Lock()

    def _api(self):
        with self._lock:
            if self._client is None:
                import docker
                self._client = docker.APIClient(base_url=self.url, timeout=self.timeout, version="auto")
            return self._client

    def network_name(self, docker_network_id: str) -> str | None:
        """The name Docker gives the network, or None while Docker does not know it."""
        import docker.errors
        try:
            return self._api().inspect_network(docker_network_id).get("Name")
        except docker.errors.NotFound:
            return None
        except Exception as exc:  # noqa: BLE001 - Docker down or slow: the name can wait
            log.info("cannot ask Docker for the name of network %s: %s", docker_network_id[:12], exc)
            with self._lock:
                self._client = None
            return None

    def container_endpoints(self, container: str) -> set[str]:
        """Endpoint ids of a container (by name or id), empty when unknown."""
        import docker.errors
        try:
            info = self._api().inspect_container(container)
        except docker.errors.NotFound:
            return set()
        except Exception as exc:  # noqa: BLE001 - any Docker failure means "not known": the caller keeps going
            log.info("cannot ask Docker about container %s: %s", container, exc)
            return set()
        return {n.get("EndpointID") for n in (info.get("NetworkSettings", {}).get("Networks") or {}).values()
                if n.get("EndpointID")}


class DockerView:
    """What Docker believes is attached: endpoint id -> container, for the
    Docker networks bound on this host. None when Docker cannot be asked,
    so callers never take "no answer" for "no containers"."""

    def __init__(self, names: DockerNames):
        self.names = names

    def running_endpoints(self) -> set[str] | None:
        """The endpoint ids of every running, paused or restarting container,
        on any network (one list call): what may never lose its port or veth,
        whatever else is believed. None when Docker cannot be asked."""
        try:
            containers = self.names._api().containers(filters={"status": ["running", "paused", "restarting"]})
        except Exception as exc:  # noqa: BLE001 - unreachable or confused Docker: say "unknown"
            log.warning("cannot list Docker's running containers: %s", exc)
            with self.names._lock:
                self.names._client = None
            return None
        return {str(n.get("EndpointID")) for c in containers
                for n in ((c.get("NetworkSettings") or {}).get("Networks") or {}).values() if n.get("EndpointID")}

    def live_endpoints(self, docker_networks: list[str]) -> dict[str, dict] | None:
        import docker.errors
        try:
            api = self.names._api()
            out: dict[str, dict] = {}
            for net_id in docker_networks:
                try:
                    info = api.inspect_network(net_id)
                except docker.errors.NotFound:
                    continue
                for cid, c in (info.get("Containers") or {}).items():
                    if cid.startswith("ep-"):      # an endpoint without a container (load balancer)
                        continue
                    try:
                        state = api.inspect_container(cid)["State"]
                    except docker.errors.NotFound:
                        continue       # listed on the network but gone: not live
                    if state.get("Running") or state.get("Paused") or state.get("Restarting"):
                        out[c["EndpointID"]] = {"container": cid, "name": c.get("Name", ""),
                                                "network": net_id, "ip": c.get("IPv4Address", "").split("/")[0],
                                                "mac": c.get("MacAddress", ""),
                                                "sandbox": state.get("Pid", 0)}
            return out
        except Exception as exc:  # noqa: BLE001 - unreachable or confused Docker: say "unknown"
            log.warning("cannot read Docker's view of endpoints: %s", exc)
            with self.names._lock:
                self.names._client = None
            return None
