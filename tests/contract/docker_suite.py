"""Docker Engine answers, as docker-py gives them from dockerd, for the calls
the product makes: drctl's job containers (docker.APIClient through
netplugin/backup/containers.py) and the plugin's names and live endpoints
(netplugin/docker_api.py).

``docker_world`` gives:
  docker          a docker.APIClient (or the fake)
  image           a local image with busybox's sh
  network         the name of an existing network
  name()          a new name for a container or a volume (removed afterwards)
  job_dir()       a new empty host folder, for the /job bind mount
  gated(code)     a command that waits for /job/go, prints "done" and exits code

``view_world`` gives:
  names, view     a DockerNames and a DockerView (or the fakes)
  network_id      the id of an existing network, named ``network_name``
  run()           start a container on it: its (container id, endpoint id)
  stop(cid)       stop that container
  unreachable()   a DockerView whose Docker does not answer
"""

from __future__ import annotations

import os
import re
import threading

import pytest

from netplugin.backup.containers import is_not_found, is_timeout

HEX64 = re.compile(r"[0-9a-f]{64}")
LABELS = {"netplugin.backup.job": "j1", "netplugin.test": "1"}
UNLIMITED = {"NanoCpus": 0, "Memory": 0, "MemorySwap": 0, "PidsLimit": None, "BlkioDeviceReadBps": None,
             "BlkioDeviceWriteBps": None, "BlkioDeviceReadIOps": None, "BlkioDeviceWriteIOps": None,
             "AutoRemove": False}
LIMITS = {"nano_cpus": 500_000_000, "mem_limit": 64 << 20, "memswap_limit": 64 << 20, "pids_limit": 50}


def create(world, code: int = 3, limits: dict | None = None) -> tuple[str, str, str]:
    """A job container as drctl makes one: (id, name, job folder)."""
    d = world.docker
    name, volume, job = world.name(), world.name(), world.job_dir()
    d.create_volume(volume, driver="local", labels={"netplugin.backup.volume": "1"})
    host_config = d.create_host_config(
        mounts=[{"Type": "volume", "Source": volume, "Target": "/backup", "ReadOnly": False},
                {"Type": "bind", "Source": job, "Target": "/job", "ReadOnly": False}],
        network_mode=world.network, auto_remove=False, restart_policy={"Name": "no"},
        cap_drop=["ALL"], security_opt=["no-new-privileges"], read_only=True,
        tmpfs={"/tmp": "rw,nosuid,nodev,size=64m"},
        log_config={"Type": "json-file", "Config": {"max-size": "10m", "max-file": "2"}},
        **(LIMITS if limits is None else limits))
    resp = d.create_container(world.image, command=world.gated(code), name=name, labels=LABELS,
                              host_config=host_config, networking_config=None, user="0:0", working_dir="/job",
                              environment={"DRCTL_JOB": "j1"}, use_config_proxy=False)
    assert set(resp) >= {"Id", "Warnings"} and HEX64.fullmatch(resp["Id"])
    assert (resp.get("Warnings") or []) == []
    return resp["Id"], name, job


def open_gate(job: str) -> None:
    with open(os.path.join(job, "go"), "w") as fh:
        fh.write("1")


class DockerAPIContract:
    def test_what_is_missing_is_not_found(self, docker_world):
        d, missing = docker_world.docker, docker_world.name()
        calls = [lambda: d.inspect_image(f"netplugin/{missing}:0"), lambda: d.inspect_network(missing),
                 lambda: d.inspect_volume(missing), lambda: d.inspect_container(missing),
                 lambda: d.start(missing), lambda: d.wait(missing, timeout=5), lambda: d.kill(missing),
                 lambda: d.logs(missing, stdout=True, stderr=True, tail=5),
                 lambda: d.remove_container(missing, force=True)]
        for call in calls:
            with pytest.raises(Exception) as exc:      # docker.errors.NotFound, or the fake's
                call()
            assert is_not_found(exc.value), exc.value
            assert type(exc.value).__name__.endswith("NotFound")      # ImageNotFound for an image

    def test_an_image_a_network_and_the_api_version(self, docker_world):
        d = docker_world.docker
        assert d.inspect_image(docker_world.image)["Id"].startswith("sha256:")
        assert d.inspect_network(docker_world.network)["Name"] == docker_world.network
        assert d.version()["ApiVersion"] >= "1.41"

    def test_a_volume(self, docker_world):
        d, name = docker_world.docker, docker_world.name()
        made = d.create_volume(name, driver="local", labels={"netplugin.backup.volume": "1"})
        seen = d.inspect_volume(name)
        for vol in (made, seen):
            assert (vol["Name"], vol["Driver"], vol["Labels"]) == (name, "local", {"netplugin.backup.volume": "1"})
            assert os.path.isdir(vol["Mountpoint"])

    def test_a_job_container_from_create_to_remove(self, docker_world):
        d = docker_world.docker
        cid, name, job = create(docker_world)
        info = d.inspect_container(cid)
        assert (info["Id"], info["Name"]) == (cid, "/" + name)
        assert info["Config"]["Cmd"] == docker_world.gated(3)
        assert "DRCTL_JOB=j1" in info["Config"]["Env"]
        assert LABELS.items() <= info["Config"]["Labels"].items()
        assert (info["State"]["Running"], info["State"]["Pid"], info["State"]["OOMKilled"]) == (False, 0, False)
        # Never started: Go's zero time (drctl re-queues a start it can prove ran nothing); found by name too
        assert info["State"]["StartedAt"].startswith("0001-01-01")
        assert d.inspect_container(name)["Id"] == cid
        hc = info["HostConfig"]
        assert (hc["NanoCpus"], hc["Memory"], hc["MemorySwap"], hc["PidsLimit"]) == (
            LIMITS["nano_cpus"], LIMITS["mem_limit"], LIMITS["memswap_limit"], LIMITS["pids_limit"])
        assert (hc["NetworkMode"], hc["ReadonlyRootfs"], hc["CapDrop"]) == (docker_world.network, True, ["ALL"])
        assert [m["Target"] for m in hc["Mounts"]] == ["/backup", "/job"]
        assert info["NetworkSettings"]["Networks"][docker_world.network]["EndpointID"] == ""

        # drctl attaches before the start: attaching to an ended container hangs on dockerd
        stream = d.attach(cid, stdout=True, stderr=True, stream=True, logs=True)
        out: list[bytes] = []
        reader = threading.Thread(target=lambda: out.extend(stream), daemon=True)
        reader.start()
        d.start(cid)
        info = d.inspect_container(cid)
        assert info["State"]["Running"] is True and info["State"]["Pid"] > 0
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", info["State"]["StartedAt"])
        assert not info["State"]["StartedAt"].startswith("0001-01-01")
        net = info["NetworkSettings"]["Networks"][docker_world.network]
        assert HEX64.fullmatch(net["EndpointID"]) and re.fullmatch(r"\d+\.\d+\.\d+\.\d+", net["IPAddress"])
        with pytest.raises(Exception) as exc:                    # still waiting at its gate
            d.wait(cid, timeout=1)
        assert is_timeout(exc.value), exc.value

        open_gate(job)
        assert d.wait(cid, timeout=30)["StatusCode"] == 3
        assert d.wait(cid, timeout=5)["StatusCode"] == 3            # an ended container answers at once
        info = d.inspect_container(cid)
        assert (info["State"]["Running"], info["State"]["ExitCode"]) == (False, 3)
        assert d.logs(cid, stdout=True, stderr=True, tail=5) == b"done\n"
        reader.join(10)
        assert not reader.is_alive() and b"".join(out) == b"done\n"

        d.remove_container(cid)
        with pytest.raises(Exception) as exc:
            d.inspect_container(cid)
        assert is_not_found(exc.value)

    def test_limits_not_asked_for_read_back_as_none(self, docker_world):
        cid, _, _ = create(docker_world, limits={})
        hc = docker_world.docker.inspect_container(cid)["HostConfig"]
        assert {k: hc[k] for k in UNLIMITED} == UNLIMITED

    def test_a_killed_container_exits_137(self, docker_world):
        d = docker_world.docker
        cid, _, _ = create(docker_world, limits={})
        d.start(cid)
        d.kill(cid)
        assert d.wait(cid, timeout=30)["StatusCode"] == 137
        info = d.inspect_container(cid)
        assert (info["State"]["Running"], info["State"]["ExitCode"]) == (False, 137)
        d.remove_container(cid, v=True, force=True)


class DockerViewContract:
    def test_a_network_has_a_name_and_an_unknown_one_none(self, view_world):
        names = view_world.names
        assert names.network_name(view_world.network_id) == view_world.network_name
        assert names.network_name("f" * 64) is None

    def test_running_containers_are_live_endpoints(self, view_world):
        view = view_world.view
        assert view.live_endpoints([view_world.network_id]) == {}
        cid, endpoint = view_world.run()
        live = view.live_endpoints([view_world.network_id, "f" * 64])     # an unknown network is skipped
        assert set(live) == {endpoint}
        info = live[endpoint]
        assert set(info) == {"container", "name", "network", "ip", "mac", "sandbox"}
        assert info["container"] == cid and info["network"] == view_world.network_id
        assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", info["ip"])
        assert re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", info["mac"])
        assert isinstance(info["sandbox"], int) and info["sandbox"] > 0
        assert info["name"] and not info["name"].startswith("/")
        view_world.stop(cid)
        assert view.live_endpoints([view_world.network_id]) == {}

    def test_running_endpoints_lists_every_running_container_on_any_network(self, view_world):
        view = view_world.view
        cid, endpoint = view_world.run()
        assert endpoint in view.running_endpoints()
        view_world.stop(cid)
        assert endpoint not in view.running_endpoints()

    def test_a_docker_that_does_not_answer_is_unknown_not_empty(self, view_world):
        assert view_world.unreachable().live_endpoints([view_world.network_id]) is None
        assert view_world.unreachable().running_endpoints() is None
