"""Binlog bookkeeping without a server: file names, a dump's coordinates,
event times from mariadb-binlog's text, the resume point, catalog records
and the command lines built from them."""

from __future__ import annotations

import calendar

import pytest

from netplugin.backup import binlog, manifest
from netplugin.errors import InvalidRequest

HEAD = """-- MariaDB dump 10.19  Distrib 10.11.19-MariaDB, for debian-linux-gnu (x86_64)
/*!40101 SET NAMES utf8mb4 */;
-- CHANGE MASTER TO MASTER_USE_GTID=slave_pos;

-- Use this when creating a slave of the master server where the backup was made.
--

-- CHANGE MASTER TO MASTER_LOG_FILE='mariadb-bin.000001', MASTER_LOG_POS=1124;

--
-- Table structure for table `a`
"""
TAIL = """UNLOCK TABLES;

-- Preferably use GTID to start replication from GTID position:

-- SET GLOBAL gtid_slave_pos='0-1-5';
/*!40103 SET TIME_ZONE=@OLD_TIME_ZONE */;

-- Dump completed on 2026-12-04  4:18:25
"""

# TZ=UTC mariadb-binlog mariadb-bin.000001 (event headers; other lines as printed)
DECODED = """/*!50530 SET @@SESSION.PSEUDO_SLAVE_MODE=1*/;
# at 4
#261204  4:19:05 server id 1  end_log_pos 256 CRC32 0xcc3966e3 \tStart: binlog v 4, server v 10.11.19 created
# at 256
#261204  4:19:05 server id 1  end_log_pos 299 CRC32 0x25f4a1e4 \tGtid list [0-1-5]
BEGIN
#261204 14:20:07 server id 1  end_log_pos 1093 CRC32 0x61a4e4e6 \tWrite_rows: table id 18 flags: STMT_END_F
### INSERT INTO `t`.`a`
#261204 14:20:09 server id 1  end_log_pos 1124 CRC32 0xb5423182 \tXid = 5
#261204 14:20:09 server id 1  end_log_pos 1173 CRC32 0xeb3e576f \tRotate to mariadb-bin.000002  pos: 4
DELIMITER ;
"""


def utc(text: str) -> float:
    import time
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S")))


@pytest.mark.parametrize("name", ["mariadb-bin.000001", "log_bin.123456789", "a.000000"])
def test_binlog_file_names_accepted(name):
    assert binlog.check_file(name) == name


@pytest.mark.parametrize("name", ["../x.000001", "mariadb-bin.1", "mariadb-bin", "-x.000001", "a b.000001",
                                  "mariadb-bin.000001;rm", "/abs.000001", "", None, "x.0000000001"])
def test_binlog_file_names_refused(name):
    with pytest.raises(InvalidRequest, match="binlog file name"):
        binlog.check_file(name)


def test_next_file_keeps_the_width():
    assert binlog.next_file("mariadb-bin.000009") == "mariadb-bin.000010"
    assert binlog.split_file("mariadb-bin.000042") == ("mariadb-bin", 42)


def test_dump_coordinates_from_head_and_tail():
    assert binlog.dump_coordinates(HEAD, TAIL) == {"file": "mariadb-bin.000001", "pos": 1124, "gtid": "0-1-5"}
    assert binlog.dump_coordinates(HEAD, "no gtid here") == {"file": "mariadb-bin.000001", "pos": 1124,
                                                             "gtid": None}
    assert binlog.dump_coordinates("-- no coordinates\n", TAIL) is None


def test_dump_coordinates_with_a_bad_file_name_are_refused():
    bad = HEAD.replace("mariadb-bin.000001", "../../etc.000001")
    with pytest.raises(InvalidRequest):
        binlog.dump_coordinates(bad, TAIL)


def test_manifest_records_the_coordinates_or_none():
    assert manifest.binlog_coordinates({"dump_head": HEAD, "dump_tail": TAIL, "server_time": "1796361000\n"}) == {
        "file": "mariadb-bin.000001", "pos": 1124, "gtid": "0-1-5", "time": 1796361000.0}
    assert manifest.binlog_coordinates({"dump_head": HEAD, "dump_tail": TAIL})["time"] is None
    assert manifest.binlog_coordinates({"dump_head": "", "dump_tail": TAIL}) is None
    assert manifest.binlog_coordinates({}) is None
    assert manifest.binlog_coordinates({"dump_head": HEAD.replace("mariadb-bin.000001", "x;y.000001"),
                                        "dump_tail": TAIL}) is None


def test_check_coordinates():
    good = {"file": "mariadb-bin.000003", "pos": 4, "gtid": None, "time": 12.0}
    assert binlog.check_coordinates(good) == good
    for bad in ({"file": "mariadb-bin.000003", "pos": 3}, {"file": "x", "pos": 9},
                {"file": "mariadb-bin.000003", "pos": True}, {"file": "mariadb-bin.000003", "pos": 9, "gtid": "x"},
                "mariadb-bin.000003:4"):
        with pytest.raises(InvalidRequest):
            binlog.check_coordinates(bad)


def test_event_times_come_from_the_file_in_utc():
    ev = binlog.parse_events(DECODED)
    assert ev.first_time == utc("2026-12-04 04:19:05")
    assert ev.last_time == utc("2026-12-04 14:20:09")
    assert ev.end_pos == 1173
    assert ev.count == 5
    assert ev.server_id == 1
    assert ev.rotated_to == "mariadb-bin.000002"


def test_a_file_without_a_final_rotate_says_so():
    ev = binlog.parse_events(DECODED.replace("\tRotate to mariadb-bin.000002  pos: 4", "\tXid = 6"))
    assert ev.rotated_to == ""


def test_no_event_is_an_error():
    with pytest.raises(InvalidRequest, match="no event header"):
        binlog.parse_events("DELIMITER ;\n")


def test_resume_refetches_the_newest_archived_file_whole():
    archived = ["mariadb-bin.000003", "mariadb-bin.000001", "mariadb-bin.000002", "index", "mariadb-bin.000002.tmp",
                "other-bin.000009"]
    assert binlog.resume_file(archived, "mariadb-bin.000001") == "mariadb-bin.000003"
    assert binlog.resume_file([], "mariadb-bin.000007") == "mariadb-bin.000007"
    assert binlog.complete_files(archived, "mariadb-bin") == ["mariadb-bin.000001", "mariadb-bin.000002"]
    assert binlog.complete_files(["mariadb-bin.000001"], "mariadb-bin") == []


def record(**over) -> binlog.BinlogFile:
    base = dict(target="shop", file="mariadb-bin.000002", volume="vol1", path="shop/binlog/mariadb-bin.000002",
                host="b", size=600, sha256="0" * 64, start_pos=4, end_pos=597, first_time=100.0, last_time=160.0,
                server_id=1, events=9)
    base.update(over)
    return binlog.BinlogFile(**base)


def test_a_good_record_passes_and_round_trips():
    rec = binlog.check_record(record())
    assert binlog.check_record(binlog.BinlogFile.from_json(rec.to_json())) == rec
    assert rec.seq == 2


@pytest.mark.parametrize("over", [
    {"path": "shop/../../etc/passwd"}, {"file": "x"}, {"end_pos": 700}, {"start_pos": 2},
    {"last_time": 50.0}, {"sha256": "zz"}, {"size": -1}, {"events": True}, {"target": "../x"},
    {"first_time": "yesterday"},
])
def test_bad_records_are_refused(over):
    with pytest.raises(InvalidRequest):
        binlog.check_record(record(**over))


def test_collector_command_line():
    argv = binlog.collector_argv(cnf="/run/drctl/client.cnf", host="10.1.0.5", port=3306,
                                 start_file="mariadb-bin.000003", out_dir="/backup/shop/binlog", server_id=4000001)
    assert argv[0] == "mariadb-binlog"
    assert "--raw" in argv and "--stop-never" in argv and "--read-from-remote-server" in argv
    assert argv[-1] == "mariadb-bin.000003"
    assert "--result-file=/backup/shop/binlog/" in argv
    assert "--stop-never-slave-server-id=4000001" in argv


@pytest.mark.parametrize("over", [
    {"host": "db; rm -rf /"}, {"port": 0}, {"start_file": "--exec=x"}, {"out_dir": "/backup/../etc"},
    {"out_dir": "relative"}, {"server_id": 0}, {"cnf": "/run/$(id)"},
])
def test_collector_command_line_refuses_bad_values(over):
    args = dict(cnf="/run/drctl/client.cnf", host="db1", port=3306, start_file="mariadb-bin.000003",
                out_dir="/backup/shop/binlog", server_id=7)
    args.update(over)
    with pytest.raises(InvalidRequest):
        binlog.collector_argv(**args)


def test_parse_at_needs_a_zone():
    assert binlog.parse_at("2026-12-04T05:10:00Z") == utc("2026-12-04 05:10:00")
    assert binlog.parse_at("2026-12-04T06:10:00+01:00") == utc("2026-12-04 05:10:00")
    assert binlog.parse_at("1796361000") == 1796361000.0
    with pytest.raises(InvalidRequest, match="no time zone"):
        binlog.parse_at("2026-12-04T05:10:00")
    with pytest.raises(InvalidRequest, match="not a time"):
        binlog.parse_at("tomorrow")
    with pytest.raises(InvalidRequest, match="fraction"):
        binlog.parse_at("2026-12-04T05:10:00.5Z")


def test_replay_command_line():
    argv = binlog.replay_argv(files=["mariadb-bin.000001", "mariadb-bin.000002"], start_pos=1124,
                              stop_at=utc("2026-12-04 05:10:00"), database="shop")
    assert argv == ["mariadb-binlog", "--start-position=1124", "--stop-datetime=2026-12-04 05:10:00",
                    "--database=shop", "mariadb-bin.000001", "mariadb-bin.000002"]
    with pytest.raises(InvalidRequest):
        binlog.replay_argv(files=["../x"], start_pos=4, stop_at=0, database="shop")
    with pytest.raises(InvalidRequest):
        binlog.replay_argv(files=["mariadb-bin.000001"], start_pos=4, stop_at=0, database="shop`; drop")
    with pytest.raises(InvalidRequest):
        binlog.replay_argv(files=[], start_pos=4, stop_at=0, database="shop")
