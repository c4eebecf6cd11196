"""drctl: MySQL/MariaDB backup and restore jobs as limited containers on
netplugin networks.

Modules, each with one job:

    config.py          drctl settings (file, DRCTL_* variables, flags; the loader is netplugin/settings.py)
    model.py           jobs, their states and legal transitions; backups (catalog records)
    store.py           the etcd layout under <etcd_prefix>/backup/ (the only module that knows keys)
    trust.py           what drctl may believe of a record read from etcd, and where it may touch files
    resources.py       what operators type (1.5, 512m, 20mb/s), the disk behind a volume,
                       the Docker host config, and checking what the kernel really applied
    jobscript.py       the bash run inside job containers, and its checksum SQL
    containers.py      the Docker Engine calls (volumes, images, networks, job containers)
    hostenv.py         what the runner reads from the host: disk, cgroup files, swap, the switch's meter
    verify.py          checking a job's recorded outputs (pure)
    ondisk.py          reading back and publishing what a job wrote (hash, manifest, move, fsync)
    manifest.py        a backup's manifest: built from a verified job, read and written as one file
    runner.py          one job's state machine: create, attach, start, gate, wait, verify, record
    physical*.py       physical backups with mariadb-backup: the job's steps (physical_jobs), the
                       backup and its receiver, the sender on the data's host, chains, restore
    binlog.py          binary log names, positions and times; binlog_runner.py the collector job;
                       binlog_prune.py pruning the archive; binlog_cli.py ``drctl binlog``
    pitr.py            point-in-time restore planned from the catalog; pitr_physical.py from a
                       physical backup
    retention.py       which backups to prune (never the last good one), tiers and budgets
    schedules.py       cron schedules, each due time fired once
    placement.py       which host's agent runs a job (labels, load), and re-placement
    drills.py          restore drills: the latest good backup restored and checked, RTO and RPO
    fleet.py           the fleet-wide passes an agent makes besides its own queue
    scheduler.py       the per-host agent: cap, per-target lock, queue, deadlines, adoption
    summary.py         read-only figures of jobs and catalog (netctl status, metrics)
    exporter.py        those figures as a Prometheus collector (registered by wiring.make_metrics)
    jobs.py            submitting jobs: checked specs, the server lock name, cancel, restore picks, check
    cli.py             the ``drctl`` command: parsing and printing only (cli_fleet.py: schedules, hosts)

Nothing connects at import time.
"""
