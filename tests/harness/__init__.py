"""The one test harness, used by every ring (tests/integration, e2e, multihost,
fault) and every benchmark (bench/):

    proc     running commands, stopping process groups, free ports, polling
    daemon   a netplugin daemon process: settings, start, answer, stop, log
    etcd     etcdctl, an etcd member, a 3-member cluster, a TLS + password member
    ovsdb    a private ovsdb-server with its own database
    iperf    one bounded iperf3 run between two network namespaces

The plugin-socket client is the product's own `netplugin.unixhttp`.
Nothing here skips: a missing service is a failure.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
