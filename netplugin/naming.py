"""Naming Docker-made networks after their Docker network.

Docker tells a driver nothing about a network's name: it stores the network
(and so its name) only after CreateNetwork answers. A global network made on
Docker's path is therefore created unnamed and named here, from the Engine
API: in the background right after CreateNetwork, and on demand (the first
CreateEndpoint, or an error message that should say "prod", not "n-48a7...").
A name that another global network holds already is recorded on the network
as a conflict, with what to do, and every container start on it fails with it.
"""

from __future__ import annotations

import logging
import threading
import time

from .docker_api import DockerNames
from .errors import NetpluginError
from .model import Network
from .store import Store

log = logging.getLogger(__name__)

NAMING_PATIENCE = 15.0   # seconds the background namer waits for Docker to store a new network


class NetworkNamer:
    def __init__(self, host_id: str, store: Store, docker: DockerNames):
        self.host_id = host_id
        self.store = store
        self.docker = docker

    def resolve(self, docker_net: str, net_id: str) -> Network | None:
        """Give the network its Docker name; on a clash, record why it cannot be used.
        None while Docker does not know the Docker network yet."""
        net = self.store.get_network(net_id)
        if net is None or net.name or net.name_conflict:
            return net
        name = self.docker.network_name(docker_net)
        if name is None:
            return None
        if self.store.set_network_name(net, name):
            log.info("network %s is named %s after its Docker network", net.id, name)
        else:
            other = self.store.network_by_name(name)
            if other is not None and other.id != net.id:
                self.store.mark_name_conflict(net, (
                    f"docker network {name} has subnet {net.subnet}, but global network {name} has subnet "
                    f"{other.subnet}: docker network rm {name}, then create it with --subnet {other.subnet} "
                    f"(or with -o name=ANOTHER-NAME for a new network)"))
        return self.store.get_network(net_id)

    def name_now(self, net: Network) -> Network:
        """The network, named now if one of this host's Docker networks stands for it."""
        for binding in self.store.list_bindings():
            if binding.host == self.host_id and binding.network == net.id:
                return self.resolve(binding.docker_network, net.id) or net
        return net

    def name_later(self, docker_net: str, net_id: str) -> None:
        """Name the network from a thread of its own, once Docker has stored it."""
        threading.Thread(target=self._name_later, args=(docker_net, net_id), daemon=True,
                         name=f"namer-{net_id}").start()

    def _name_later(self, docker_net: str, net_id: str) -> None:
        stop = time.monotonic() + NAMING_PATIENCE
        while time.monotonic() < stop:
            try:
                if self.resolve(docker_net, net_id) is not None:
                    return
            except NetpluginError as exc:
                log.warning("cannot name network %s yet: %s", net_id, exc.message)
            # Docker stores the network right after CreateNetwork answers: look again soon.
            time.sleep(0.05 if time.monotonic() + NAMING_PATIENCE - stop < 1 else 0.2)
