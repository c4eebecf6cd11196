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
