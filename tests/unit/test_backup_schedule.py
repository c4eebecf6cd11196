"""Schedules (netplugin/backup/schedules.py): due times in a time zone and
across DST, arming, missed times inside and outside the window, bad records
skipped and counted, and exactly one job per due time when several agents
(threads with clocks of their own) race on one MemoryKV."""

from __future__ import annotations

import threading
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from netplugin.backup.config import BackupConfig
from netplugin.backup.jobs import new_job
from netplugin.backup.model import BACKUP, JobSpec
from netplugin.backup.schedules import Firing, Schedule, check_schedule, due_after, due_at_or_before, next_run, plan
from netplugin.backup.store import BackupStore
from netplugin.errors import InvalidRequest
from netplugin.kv import Put

from .fakes import MemoryKV

PREFIX = "/netplugin/t"
UTC = ZoneInfo("UTC")
SPEC = JobSpec(network="prod", db_host="10.10.0.10", option_file="/etc/drctl/x.cnf", volume="backups",
               database="shop").__dict__


def t(text: str, tz: str = "UTC") -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


def sched(cron: str = "0 2 * * *", tz: str = "UTC", **kw) -> Schedule:
    base = {"name": "nightly", "cron": cron, "tz": tz, "kind": BACKUP, "target": "shop", "spec": dict(SPEC),
            "host": "h1", "created": t("2026-01-01T00:00")}
    base.update(kw)
    return Schedule(**base)


# -- due times ------------------------------------------------------------------------------

def test_due_times_follow_the_time_zone_and_dst():
    s = sched("30 2 * * *", "Europe/Berlin")
    # 2026-03-29: Berlin skips 02:00-03:00; croniter's rule for the missing 02:30 gives one run that day
    day_before = due_after(s, t("2026-03-28T03:00", "Europe/Berlin"))
    after = due_after(s, day_before)
    assert datetime.fromtimestamp(day_before, ZoneInfo("Europe/Berlin")).date().isoformat() == "2026-03-29"
    assert datetime.fromtimestamp(after, ZoneInfo("Europe/Berlin")).date().isoformat() == "2026-03-30"
    assert datetime.fromtimestamp(after, ZoneInfo("Europe/Berlin")).hour == 2
    # in winter, 02:30 Berlin is 01:30 UTC
    jan = due_after(s, t("2026-01-10T00:00"))
    assert jan == t("2026-01-10T01:30")


def test_due_at_or_before_includes_the_exact_due_time():
    s = sched("0 2 * * *")
    assert due_at_or_before(s, t("2026-01-10T02:00")) == t("2026-01-10T02:00")
    assert due_at_or_before(s, t("2026-01-10T01:59:59")) == t("2026-01-09T02:00")


def test_a_new_schedule_is_armed_not_run():
    s = sched(last_due=None)
    p = plan(s, t("2026-01-10T02:00:30"), 3600)
    assert p.arm and p.run is None and p.settle == t("2026-01-10T02:00")


def test_nothing_due_before_the_next_time():
    s = sched(last_due=t("2026-01-10T02:00"))
    assert plan(s, t("2026-01-11T01:59"), 3600) is None


def test_the_due_time_runs_once_reached():
    s = sched(last_due=t("2026-01-10T02:00"))
    p = plan(s, t("2026-01-11T02:00:05"), 3600)
    assert p.run == t("2026-01-11T02:00") and p.settle == p.run and p.missed_count == 0


def test_missed_times_newest_runs_inside_window_others_recorded():
    s = sched(last_due=t("2026-01-10T02:00"))
    p = plan(s, t("2026-01-13T02:40"), 3600)
    assert p.run == t("2026-01-13T02:00")
    assert p.missed == [t("2026-01-11T02:00"), t("2026-01-12T02:00")] and p.missed_count == 2


def test_missed_beyond_window_is_recorded_not_run():
    s = sched(last_due=t("2026-01-10T02:00"))
    p = plan(s, t("2026-01-11T03:30"), 3600)
    assert p.run is None and p.missed == [t("2026-01-11T02:00")] and p.settle == t("2026-01-11T02:00")


def test_many_missed_are_counted_without_walking_forever():
    s = sched("* * * * *", last_due=t("2026-01-01T00:00"))
    p = plan(s, t("2026-03-01T00:00:10"), 60)
    assert p.run == t("2026-03-01T00:00") and p.missed_count >= 10_000 and len(p.missed) <= 20


def test_next_run_is_none_when_paused():
    s = sched(last_due=t("2026-01-10T02:00"))
    assert next_run(s, t("2026-01-10T03:00")) == t("2026-01-11T02:00")
    s.paused = True
    assert next_run(s, t("2026-01-10T03:00")) is None


@pytest.mark.parametrize("change, words", [
    ({"cron": "0 2 * *"}, "five fields"), ({"cron": "61 * * * *"}, "cron"),
    ({"cron": "*/5 * * * * *"}, "five fields"), ({"tz": "Mars/Olympus"}, "not known"),
    ({"tz": "../../etc/passwd"}, "IANA"), ({"host": "", "place": {}}, "host or a placement"),
    ({"host": "bad host"}, "host id"), ({"kind": "restore"}, "kind"), ({"place": {"site": "a b"}}, "place value"),
    ({"spec": dict(SPEC, option_file="/root/.my.cnf")}, "option_dir"), ({"last_due": "yesterday"}, "last_due"),
])
def test_bad_schedules_are_refused_saying_what(change, words):
    with pytest.raises(InvalidRequest, match=words):
        check_schedule(sched(**change), BackupConfig())


# -- firing, with MemoryKV ------------------------------------------------------------------

class Clock:
    def __init__(self, now: float):
        self.now = now


def firing(store: BackupStore, cfg: BackupConfig) -> Firing:
    return Firing(store, cfg, lambda kind, target, host, spec, now, by:
                  new_job(cfg, kind, target, host, spec, now, by))


def test_one_agent_arms_then_fires_each_due_time_once():
    kv = MemoryKV()
    store = BackupStore(kv, PREFIX)
    cfg = BackupConfig()
    store.create_schedule(sched("* * * * *"))
    f = firing(store, cfg)
    start = t("2026-01-10T02:00:30")
    assert f.tick(start) == []                               # armed
    assert f.tick(start + 10) == []
    first = f.tick(start + 31)                               # 02:01:01
    assert len(first) == 1 and f.tick(start + 40) == []
    assert len(f.tick(start + 95)) == 1                      # 02:02:05
    s, _ = store.get_schedule("nightly")
    assert s.runs == 2 and s.last_fired == t("2026-01-10T02:02") and s.missed_count == 0
    assert sorted(store.fired("nightly")) == [t("2026-01-10T02:01"), t("2026-01-10T02:02")]
    jobs = store.list_jobs()
    assert len(jobs) == 2 and all(store.queued("h1").count(j.id) == 1 for j in jobs)
    assert all(j.submitted_by == "schedule nightly" for j in jobs)


def test_agents_racing_submit_exactly_one_job_per_due_time():
    """8 agents, each with its clock a few seconds off, pass over a per-minute
    schedule 42 times across 20.5 minutes, all at once: 20 jobs, one per minute."""
    kv = MemoryKV()
    store = BackupStore(kv, PREFIX)
    cfg = BackupConfig()
    store.create_schedule(sched("* * * * *", last_due=t("2026-01-10T02:00")))
    start = t("2026-01-10T02:00:10")
    agents = [firing(BackupStore(kv, PREFIX), cfg) for _ in range(8)]
    barrier = threading.Barrier(len(agents))
    got: list[str] = []
    lock = threading.Lock()

    def run(i: int, f: Firing) -> None:
        for step in range(42):
            barrier.wait()
            ids = f.tick(start + step * 30 + (i % 4))        # clocks 0-3 s apart
            with lock:
                got.extend(ids)
    threads = [threading.Thread(target=run, args=(i, f)) for i, f in enumerate(agents)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    jobs = store.list_jobs()
    assert len(got) == len(set(got)) == len(jobs) == 20
    s, _ = store.get_schedule("nightly")
    assert s.runs == 20 and s.missed_count == 0
    assert sorted({j.created // 60 for j in jobs}) == sorted(j.created // 60 for j in jobs)


def test_an_agent_back_after_an_outage_runs_the_newest_once_and_records_the_others():
    kv = MemoryKV()
    store = BackupStore(kv, PREFIX)
    cfg = BackupConfig(missed_window=600)
    store.create_schedule(sched("0 * * * *", last_due=t("2026-01-10T02:00")))
    f = firing(store, cfg)
    ids = f.tick(t("2026-01-10T05:04"))
    assert len(ids) == 1
    s, _ = store.get_schedule("nightly")
    assert s.last_fired == t("2026-01-10T05:00") and s.missed_count == 2
    assert [m["due"] for m in s.missed] == [t("2026-01-10T03:00"), t("2026-01-10T04:00")]
    # past the window: recorded missed, nothing run
    assert f.tick(t("2026-01-10T06:30")) == []
    s, _ = store.get_schedule("nightly")
    assert s.missed_count == 3 and s.missed[-1]["due"] == t("2026-01-10T06:00") and s.runs == 1


def test_paused_schedules_do_not_fire():
    kv = MemoryKV()
    store = BackupStore(kv, PREFIX)
    store.create_schedule(sched("* * * * *", last_due=t("2026-01-10T02:00"), paused=True))
    assert firing(store, BackupConfig()).tick(t("2026-01-10T02:05:01")) == []
    assert store.list_jobs() == []


def test_a_bad_record_is_skipped_and_counted_and_the_others_fire():
    kv = MemoryKV()
    store = BackupStore(kv, PREFIX)
    store.create_schedule(sched("* * * * *", last_due=t("2026-01-10T02:00")))
    kv.txn([], [Put(store.k_schedule("aaa"), b"{not json"),
                Put(
                    store.k_schedule("bbb"), sched("* * * * *", name="other", last_due=0.0).to_json())])
    f = firing(store, BackupConfig())
    assert len(f.tick(t("2026-01-10T02:01:01"))) == 1
    assert f.bad == 2                                        # not JSON; filed under a name not its own


def test_the_claim_keys_kept_are_bounded():
    kv = MemoryKV()
    store = BackupStore(kv, PREFIX)
    store.create_schedule(sched("* * * * *", last_due=t("2026-01-10T02:00")))
    f = firing(store, BackupConfig())
    for m in range(1, 16):
        assert len(f.tick(t("2026-01-10T02:00") + m * 60 + 1)) == 1
    assert len(store.fired("nightly")) == 10
    assert min(store.fired("nightly")) == t("2026-01-10T02:06")


def test_a_placed_schedule_with_no_eligible_host_records_a_miss():
    kv = MemoryKV()
    store = BackupStore(kv, PREFIX)
    store.create_schedule(sched("* * * * *", host="", place={"site": "dr"}, last_due=t("2026-01-10T02:00")))
    cfg = BackupConfig()
    f = Firing(store, cfg, lambda *a: new_job(cfg, *a), place=lambda s: None)
    assert f.tick(t("2026-01-10T02:01:01")) == []
    s, _ = store.get_schedule("nightly")
    assert s.missed_count == 1 and "site=dr" in s.missed[-1]["why"] and store.list_jobs() == []


def test_the_agent_fires_then_admits_the_scheduled_job_in_its_tick():
    from netplugin.backup.fleet import fleet_passes
    from netplugin.backup.scheduler import Agent

    kv = MemoryKV()
    store = BackupStore(kv, PREFIX)
    cfg = BackupConfig(poll=0.01, lease_ttl=5, schedule_poll=60)
    store.create_schedule(sched("* * * * *", last_due=t("2026-01-10T02:00")))
    clock = Clock(t("2026-01-10T02:00:30"))

    class Done:
        def run(self, job):
            return job
    agent = Agent(store, "h1", cfg, Done, clock=lambda: clock.now, fleet=fleet_passes(store, cfg))
    agent.start(wait_previous=0)
    try:
        assert agent.tick() == []                      # nothing due at 02:00:30
        clock.now += 31
        assert agent.tick() == []                      # 02:01:01, but the last pass was 31 s ago (< 60)
        clock.now += 30
        assert agent.tick() == []                      # the pass queues the 02:01 job after this tick's admissions
        assert len(store.list_jobs()) == 1
        admitted = agent.tick()
        assert len(admitted) == 1 and store.get(admitted[0])[0].submitted_by == "schedule nightly"
    finally:
        agent.join(5)
        agent.close()
