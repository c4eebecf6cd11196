"""The Docker suites (tests/contract/docker_suite.py) against FakeDocker
(drctl's Docker) and FakeDockerNames/FakeDockerView (the plugin's);
tests/e2e/test_contract_docker.py runs them against dockerd."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

from ..contract.docker_suite import DockerAPIContract, DockerViewContract
from .backup_fakes import FakeDocker
from .fakes import FakeDockerNames, FakeDockerView

IMAGE = "netplugin/mariadb-tools:10.11"


def gated_exit(c, job_dir, volume, docker) -> int:
    """The fake's run of ``gated(code)``, once the fake has seen /job/go."""
    c.logs.append("done")
    return int(c.command[-1])


@pytest.fixture
def docker_world(tmp_path):
    d, n = FakeDocker(str(tmp_path / "docker")), itertools.count(1)
    d.behaviour = gated_exit

    def job_dir() -> str:
        path = tmp_path / f"job{next(n)}"
        path.mkdir()
        return str(path)
    return SimpleNamespace(docker=d, image=IMAGE, network="prod", name=lambda: f"nptest-contract-{next(n)}",
                           job_dir=job_dir, gated=lambda code: ["gate", "then", "exit", str(code)])


@pytest.fixture
def view_world():
    network_id = "d" * 64
    view, n = FakeDockerView(), itertools.count(2)

    def run() -> tuple[str, str]:
        endpoint = f"{next(n):064x}"
        return view.attach(endpoint, network_id, f"172.18.0.{next(n)}")["container"], endpoint

    def stop(cid: str) -> None:
        for endpoint in [e for e, info in view.live.items() if info["container"] == cid]:
            view.detach(endpoint)

    def unreachable() -> FakeDockerView:
        gone = FakeDockerView()
        gone.reachable = False
        return gone
    return SimpleNamespace(names=FakeDockerNames({network_id: "prod"}), view=view, network_id=network_id,
                           network_name="prod", run=run, stop=stop, unreachable=unreachable)


class TestFakeDocker(DockerAPIContract):
    pass


class TestFakeDockerView(DockerViewContract):
    pass
