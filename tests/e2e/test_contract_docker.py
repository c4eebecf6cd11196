"""The Docker suites (tests/contract/docker_suite.py) against docker-py and
the real dockerd, with the local busybox image and a bridge network of the
test's own: what FakeDocker, FakeDockerNames and FakeDockerView are held to
in tests/unit/test_contract_docker.py."""

from __future__ import annotations

import contextlib
import secrets
import time
from types import SimpleNamespace

import docker
import pytest

from netplugin.docker_api import DockerNames, DockerView

from ..contract.docker_suite import DockerAPIContract, DockerViewContract
from .conftest import IMAGE, LABEL

URL = "unix:///var/run/docker.sock"
GATE = "while [ ! -e /job/go ]; do sleep 0.05; done; echo done; exit {code}"


@pytest.fixture
def client():
    c = docker.APIClient(base_url=URL, timeout=120, version="auto")
    yield c
    c.close()


@pytest.fixture
def network(client):
    name = "nptest-contract-" + secrets.token_hex(4)
    net = client.create_network(name, driver="bridge", labels={"netplugin.test": "1"})
    yield name, net["Id"]
    client.remove_network(net["Id"])


@pytest.fixture
def docker_world(client, network, tmp_path):
    made: list[str] = []

    def name() -> str:
        made.append("nptest-contract-" + secrets.token_hex(4))
        return made[-1]

    def job_dir() -> str:
        path = tmp_path / secrets.token_hex(4)
        path.mkdir()
        return str(path)
    yield SimpleNamespace(docker=client, image=IMAGE, network=network[0], name=name, job_dir=job_dir,
                          gated=lambda code: ["sh", "-c", GATE.format(code=code)])
    for n in made:                  # a name was used for a container or a volume
        with contextlib.suppress(docker.errors.NotFound):
            client.remove_container(n, v=True, force=True)
        with contextlib.suppress(docker.errors.NotFound):
            client.remove_volume(n)


@pytest.fixture
def view_world(client, network):
    names = DockerNames(URL)
    started: list[str] = []

    def run() -> tuple[str, str]:
        cid = client.create_container(IMAGE, command=["sleep", "600"], labels={LABEL.split("=")[0]: "1"},
                                      host_config=client.create_host_config(network_mode=network[0]))["Id"]
        started.append(cid)
        client.start(cid)
        endpoint = client.inspect_container(cid)["NetworkSettings"]["Networks"][network[0]]["EndpointID"]
        return cid, endpoint

    def stop(cid: str) -> None:
        client.kill(cid)
        client.wait(cid, timeout=30)
        time.sleep(0.1)
    yield SimpleNamespace(names=names, view=DockerView(names), network_id=network[1], network_name=network[0],
                          run=run, stop=stop, unreachable=lambda: DockerView(DockerNames("unix:///nonexistent.sock")))
    for cid in started:
        client.remove_container(cid, force=True)


class TestDockerAPI(DockerAPIContract):
    pass


class TestDockerView(DockerViewContract):
    pass
