"""drctl: MySQL/MariaDB backup and restore jobs as limited containers on
netplugin networks.

Modules, each with one job:

    config.py     drctl settings (file, DRCTL_* variables, flags)
    model.py      jobs, their states and legal transitions; backups (catalog records)
    store.py      the etcd layout under <etcd_prefix>/backup/ (the only module that knows keys)
    resources.py  what operators type (1.5, 512m, 20mb/s), the disk behind a volume,
                  the Docker host config, and checking what the kernel really applied
    jobscript.py  the bash run inside job containers, and its checksum SQL
    runner.py     one job: create, attach, start, gate, wait, verify, record
    retention.py  which backups to prune (never the last good one)
    scheduler.py  the per-host agent: cap, per-target lock, queue, deadlines, adoption
    cli.py        the ``drctl`` command

Nothing connects at import time.
"""
