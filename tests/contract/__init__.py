"""Behaviour suites written once and run twice: against a fake in the unit
ring and against the real thing it stands for in a real ring. A fake that
answers differently from the real thing fails the unit ring's run of the
suite, so the unit tests built on it cannot pass by construction.

Each suite is a plain class whose tests take one fixture, the "world": the
object under test plus what the suite needs around it (a fresh key prefix,
a bridge name, a way to let time pass). A ring runs a suite by subclassing
it in a thin ``test_contract_*.py`` file that defines that fixture.

| suite | fake (tests/unit) | real (ring) |
|---|---|---|
| kv_suite | MemoryKV | EtcdKV on etcd (integration) |
| dataplane_suite | FakeSwitch, FakeLinks | Switch on Open vSwitch, Links on the kernel (integration) |
| flows_suite | FakeFlows | Flows through ovs-ofctl on a bridge (integration) |
| docker_suite | FakeDocker (backup_fakes.py), FakeDockerNames, FakeDockerView | docker-py on dockerd (e2e) |

FakeHostEnv's kernel (backup_fakes.cgroup_files) is compared directly with a
real container's cgroup files in tests/e2e/test_contract_cgroups.py.
"""
