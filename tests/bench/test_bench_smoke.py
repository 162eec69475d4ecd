"""The benchmark harness end to end, tiny: a real ``synclab serve`` and the real relay, real sockets.

No timing is asserted here; the counts are: every send is delivered to every group member and
stored, a decision the relay drops is counted lost, and a stored decision deleted behind the
server's back is counted unpersisted. The cluster case runs tiny on this machine's PostgreSQL
and Redis (skipped without them, failed with ``CI=true``, see ``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.__main__ import Case, cpu_ratios, main, matrix, median_runs, run_case, table, verdicts
from bench.disk import main as disk_main
from bench.disk import measure as disk_measure
from bench.load import Api, Load, run_load, worker_of
from bench.proc import cores, device_interrupts, running, thread_times, threads_used
from bench.services import Processes, Services, used
from bench.writer import main as writer_main
from bench.writer import measure
from tests.server.harness import timeout

#: 8 participants in 2 groups of 4, 5 decisions/s each for 1 s: 40 sends, 160 deliveries
LOAD = Load(participants=8, group_size=4, rate=5.0, duration=1.0, grace=timeout(5))


def test_a_run_s_files_are_removed_after_it_and_kept_when_it_failed() -> None:
    """A server run leaves tens of megabytes of database: gone after a run that ended well, kept
    (and named) after one that failed."""
    with running("relay", None) as relay:
        kept = relay.workdir
        assert kept.is_dir()
    assert not kept.exists()
    with pytest.raises(RuntimeError, match="the run failed"), running("relay", None) as relay:
        kept = relay.workdir
        raise RuntimeError("the run failed")
    try:
        assert (kept / "relay.log").is_file()
    finally:
        shutil.rmtree(kept, ignore_errors=True)


async def test_relay_delivers_everything_and_a_dropped_decision_is_lost() -> None:
    with running("relay", None) as relay:
        async with asyncio.timeout(timeout(30)):
            clean_run = await run_load(relay, LOAD)
    clean = clean_run.summary()
    assert clean["sent"] == 40, clean
    assert clean["lost"] == 0 and clean["lost_deliveries"] == 0, clean
    assert clean["deliveries"] == 160 and clean["acked"] == 40 and clean["delivered"] == 40, clean
    assert clean["unpersisted"] is None  # the relay stores nothing, so nothing is checked
    assert clean["generator_frames"]["written_directly"] == 40, clean
    assert clean["generator_frames"]["read_directly"] == 200, clean  # 160 deliveries and 40 acks
    # the handling of its reads was noted (200 frames, in as many reads or fewer), and a lag of its own per send
    assert 0 < len(clean_run.read_spans) // 2 <= 200
    own, lag = clean["own_send_lag_ms"], clean["send_lag_ms"]
    assert own["n"] == lag["n"] == 40 and 0 <= own["p99"] <= lag["p99"], clean

    with running("relay", None, ["--drop-every", "7"]) as relay:
        async with asyncio.timeout(timeout(30)):
            dropping = (await run_load(relay, LOAD)).summary()
    # the relay dropped its 7th, 14th, ... 35th decision: 5 decisions, 20 deliveries, 5 acks
    assert dropping["sent"] == 40, dropping
    assert dropping["lost"] == 5 and dropping["lost_deliveries"] == 20, dropping
    assert dropping["deliveries"] == 140 and dropping["acked"] == 35 and dropping["delivered"] == 35, dropping


@pytest.mark.parametrize("frames", [False, True], ids=["ordinary", "frames"])
async def test_the_relay_that_stores_first_stores_every_decision_once_and_delivers_it(frames: bool) -> None:
    """Also with ``--frames``: written at once, made once per broadcast, a stored batch's together."""
    with running("relay", None, ["--fsync", "decisions.log", *(["--frames"] if frames else [])]) as relay:
        async with asyncio.timeout(timeout(30)):
            run = await run_load(relay, LOAD)
        stored = [orjson.loads(line) for line in (relay.workdir / "decisions.log").read_bytes().splitlines()]
    summary = run.summary()
    assert summary["lost"] == 0 and summary["deliveries"] == 160 and summary["acked"] == 40, summary
    assert len(stored) == 40 and {(f["channel"], f["payload"]) for f in stored} == {("decisions", k) for k in range(1, 6)}
    # acknowledged in the order stored: each participant's acks come in the order it sent
    for peer in run.peers:
        mine = [k for i, k, _ in run.acks if i == peer.index]
        assert mine == sorted(mine), mine


async def test_server_stores_everything_and_a_missing_event_is_unpersisted() -> None:
    with running("server", None) as server:
        async with asyncio.timeout(timeout(30)):
            run = await run_load(server, LOAD)
            first = run.summary()
            assert first["sent"] == 40, first
            assert first["lost"] == 0 and first["deliveries"] == 160 and first["acked"] == 40, first
            assert first["unpersisted"] == 0 and first["not_stored"] == 0, first
            assert first["target_cpu"] is not None and first["target_rss_mb"] > 0, first
            # the generator wrote every decision's frame and read the frames after the start itself
            frames = first["generator_frames"]
            assert frames["written_directly"] == 40 and frames["read_directly"] >= 160, frames
            # the event loop's thread apart from the others (the writer the busiest of them)
            threads = first["threads_per_decision"]
            assert set(threads) == {"main", "others", "busiest"}, threads
            assert threads["main"]["voluntary"] > 0 and threads["others"]["voluntary"] > 0, threads
            for key in ("user_us", "system_us", "voluntary", "involuntary"):
                assert 0 <= threads["busiest"][key] <= threads["others"][key], threads
            # every decision is one write of two events (the decision and the group's broadcast)
            writer = first["writer"]
            assert writer["writes"] == 40 and writer["events"] == 80, writer
            assert 1 <= writer["batches"] <= 40 and writer["writes_per_batch"] == 40 / writer["batches"], writer
            assert sum(writer["commit_ms"].values()) == writer["batches"], writer
            assert writer["slow_commits"] == sum(n for b, n in writer["commit_ms"].items() if b not in ("1", "2", "5", "10", "20"))

            # one acknowledged decision vanishes from the database: the check must see it
            with sqlite3.connect(server.database) as db:
                gone = db.execute("DELETE FROM events WHERE id = (SELECT min(id) FROM events WHERE channel = 'decisions')")
                assert gone.rowcount == 1
            assert run.experiment is not None
            run.stored = await Api(server.base, server.token).decisions(run.experiment)
            second = run.summary()
    assert second["unpersisted"] == 1 and second["not_stored"] == 1, second


def test_repeated_runs_are_judged_by_the_median_run() -> None:
    def run(p99: float, p50: float, repeat: int) -> dict[str, Any]:
        return {"name": "server-2000", "repeat": repeat, "latency_ms": {"p50": p50, "p99": p99}, "lost": 0, "unpersisted": 0}

    rows = [run(40.0, 2.0, 1), run(12.0, 2.5, 2), run(9.0, 3.5, 3)]
    assert median_runs(rows)["server-2000"]["repeat"] == 2
    lines = verdicts(rows)
    assert "MET    2,000/s p99 <= 25 ms: 12.0 ms" in lines
    assert "MET    2,000/s p50 <= 3 ms: 2.5 ms" in lines
    assert median_runs(rows[:2])["server-2000"]["repeat"] == 2  # of two, the lower p99


def test_a_run_whose_generator_lagged_is_left_out_or_judged_unsure() -> None:
    def run(name: str, p99: float, lag: float, repeat: int) -> dict[str, Any]:
        return {"name": name, "repeat": repeat, "latency_ms": {"p50": 1.0, "p99": p99}, "send_lag_ms": {"p99": lag},
                "lost": 0, "unpersisted": 0}

    # the steadier repeats are judged; the stalled one (generator 30 ms late) is left out
    rows = [run("server-2000", 3.0, 30.0, 1), run("server-2000", 9.0, 1.0, 2), run("server-2000", 8.0, 1.2, 3)]
    assert median_runs(rows)["server-2000"]["repeat"] == 3
    assert "MET    2,000/s p99 <= 25 ms: 8.0 ms" in verdicts(rows)
    # a relay whose every repeat stalled cannot make the ratio met
    relay = [run("relay-2000", 40.0, 25.0, 1), run("relay-2000", 60.0, 20.0, 2)]
    lines = verdicts(rows + relay)
    ratio = next(line for line in lines if "relay's" in line)
    assert ratio.startswith("UNSURE p99 <= 2x the relay's") and "relay-2000 25.0 ms" in ratio, ratio
    # counts are judged whatever the timing
    assert "MET    2,000/s 0 lost: 0" in lines


async def test_the_writer_benchmark_stores_every_decision_it_times(tmp_path: Path) -> None:
    """bench.writer drives the real writer: its decisions are in the database, one batch per round."""
    async with asyncio.timeout(timeout(60)):
        r = await measure(8, 4, batch=3, prefill=30, rounds=20, seed=7, directory=tmp_path)
    assert r["stored"] == (30 // 3 + 20) * 3, r
    assert r["writes_per_batch"] == 3.0, r
    assert r["writer_cpu_us_per_decision"] > 0 and r["written_kb_per_batch"] > 0, r
    assert r["wall_ms"]["p50"] >= r["writer_cpu_ms"]["p50"] > 0, r


def test_the_writer_benchmark_refuses_a_batch_larger_than_the_participants(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        writer_main(["--participants", "8", "--batch", "9"])
    assert exit_.value.code == 2
    assert "--batch: expected 1 to --participants (8), got 9" in capsys.readouterr().err


def test_the_disk_benchmark_times_every_sync_it_makes_and_leaves_no_file(tmp_path: Path) -> None:
    row = disk_measure(str(tmp_path), size=8192, count=25, pause=0.0)
    assert row["size"] == 8192 and row["count"] == 25 and row["fdatasync_ms"]["n"] == 25, row
    assert 0 < row["fdatasync_ms"]["p50"] <= row["fdatasync_ms"]["max"], row
    assert list(tmp_path.iterdir()) == []


def test_the_disk_benchmark_refuses_a_size_beyond_its_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert disk_main(["--dir", str(tmp_path), "--size", "0"]) == 2
    assert "size: expected 1 to 4194304 bytes, got 0" in capsys.readouterr().err


async def test_the_matrix_runs_the_disk_case_in_a_process_of_its_own_and_prints_its_line() -> None:
    async with asyncio.timeout(timeout(60)):
        row = await run_case(Case("disk", "disk"), None)
    assert row["name"] == "disk" and row["fdatasync_ms"]["n"] == row["count"] == 2000, row
    assert "disk: fdatasync after a 32 KiB write (2000 times" in table([row])


def test_the_table_names_the_writers_slow_commits_and_the_longest_ones_bucket() -> None:
    def row(commit_ms: dict[str, int], slow: int, slowest: str | None) -> dict[str, Any]:
        return {"name": "server-2000", "target": "server", "participants": 400, "group_size": 4, "rate": 5.0,
                "offered_per_s": 2000.0, "delivered_per_s": 2000.0, "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 3.0, "max": 9.0},
                "ack_latency_ms": None, "lost": 0, "unpersisted": 0, "target_cpu": 0.7, "target_rss_mb": 90.0,
                "writer": {"writes_per_batch": 1.8, "commit_ms": commit_ms, "slow_commits": slow, "slowest_commit_bucket": slowest},
                "generator_cpu": 0.3, "send_lag_ms": {"p99": 1.0}, "tick_lateness_ms": None}

    calm = table([row({"1": 900, "2": 100}, 0, None)]).splitlines()[2]
    assert "1.80" in calm and calm.split()[-4] == "0", calm
    stalled = table([row({"1": 900, "50": 2, "100": 1}, 3, "100")]).splitlines()[2]
    assert "3 <=100" in stalled, stalled
    assert "2 >1000" in table([row({"more": 2}, 2, "more")])


def test_the_server_is_also_compared_with_the_relay_that_stores_first() -> None:
    def run(name: str, p99: float) -> dict[str, Any]:
        return {"name": name, "repeat": 1, "latency_ms": {"p50": 1.0, "p99": p99}, "lost": 0, "unpersisted": 0}

    lines = verdicts([run("server-2000", 4.5), run("relay-2000", 1.5), run("relay-fsync-2000", 3.0)])
    assert "MISSED p99 <= 2x the relay's: 3.00x (4.5 vs 1.5 ms)" in lines
    assert ("MET    p99 <= 2x the relay's that stores before it broadcasts (fdatasync, no SQLite): "
            "1.50x (4.5 vs 3.0 ms)") in lines
    slower = verdicts([run("server-2000", 6.5), run("relay-fsync-2000", 3.0)])
    assert ("MISSED p99 <= 2x the relay's that stores before it broadcasts (fdatasync, no SQLite): "
            "2.17x (6.5 vs 3.0 ms)") in slower


def test_the_p99_ratio_pairs_each_repeat_of_the_server_with_the_same_repeat_of_the_relay() -> None:
    """Issue 21: the median of three ratios, each from one repeat, not the ratio of the medians
    (here 4.3 / 2.7 = 1.6x, met, where each repeat's own ratio but one is over 2x)."""
    def run(name: str, repeat: int, p99: float, lag: float = 1.0) -> dict[str, Any]:
        return {"name": name, "repeat": repeat, "latency_ms": {"p50": 1.0, "p99": p99}, "send_lag_ms": {"p99": lag},
                "lost": 0, "unpersisted": 0}

    rows = [run("relay-fsync-2000", 1, 1.8), run("relay-fsync-2000", 2, 2.9), run("relay-fsync-2000", 3, 2.7),
            run("server-2000", 1, 3.7), run("server-2000", 2, 6.0), run("server-2000", 3, 4.3)]
    line = next(line for line in verdicts(rows) if "stores before it broadcasts" in line)
    assert line == ("MISSED p99 <= 2x the relay's that stores before it broadcasts (fdatasync, no SQLite): 2.06x "
                    "(median of 2.06, 2.07, 1.59, each from one repeat: 3.7 vs 1.8, 6.0 vs 2.9, 4.3 vs 2.7 ms)"), line
    # a repeat whose relay stalled (its generator 30 ms late) is left out while a steady pair is left
    rows[0] = run("relay-fsync-2000", 1, 40.0, lag=30.0)
    line = next(line for line in verdicts(rows) if "stores before it broadcasts" in line)
    assert line.startswith("MET") and "1.83x (median of 2.07, 1.59," in line and "40.0" not in line, line
    # a repeat of the server alone (no relay of the same repeat) is no pair
    assert len([r for r in rows if r["name"] == "server-2000"]) == 3
    only = verdicts([*rows[3:], run("relay-fsync-2000", 2, 3.0)])
    assert any(line.startswith("MET") and line.endswith("2.00x (6.0 vs 3.0 ms)") for line in only), only


def test_every_group_is_spread_over_the_workers_and_its_first_member_alternates() -> None:
    for workers, size in ((2, 4), (2, 2), (3, 6), (2, 5)):
        for group in range(6):
            members = [worker_of(group * size + m, size, workers) for m in range(size)]
            assert members[0] == group % workers, (workers, size, group, members)
            assert set(members) == set(range(workers)), (workers, size, group, members)
            # as even as the group's size allows
            assert max(members.count(w) for w in range(workers)) - min(members.count(w) for w in range(workers)) <= 1


def test_cpu_is_counted_per_process_and_a_pid_reused_is_another_process() -> None:
    before = {(10, 100): 1.0, (11, 100): 2.0, (12, 100): 5.0}
    after = {(10, 100): 1.5, (11, 100): 2.25, (12, 900): 0.5}  # 12 ended, and a new 12 started since
    assert used(before, after) == 0.5 + 0.25 + 0.5
    mine = Processes("target", (os.getpid(),)).read()
    assert list(mine) and all(cpu > 0 for cpu in mine.values()), mine


#: /proc/interrupts of a 2-core VM whose disk (virtio1-req.0) raises its interrupts on CPU1
INTERRUPTS = """           CPU0       CPU1
  1:          0          9   IO-APIC   1-edge      i8042
 32:        177          0  PCI-MSIX-0000:00:01.0   4-edge      virtio0-reporting_vq
 36:          0     657732  PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0
NMI:          0          0   Non-maskable interrupts
LOC:    9021311    8802101   Local timer interrupts
RES:     412001     398880   Rescheduling interrupts
ERR:          0
"""


def test_the_generator_gets_the_core_the_disk_does_not_interrupt() -> None:
    """The devices' interrupts are counted per CPU (the kernel's own lines left out), and the target
    gets the core that takes more of them; with as many on both, the first core."""
    assert device_interrupts(INTERRUPTS) == {0: 177, 1: 657741}
    assert device_interrupts("") == {}
    mine = sorted(os.sched_getaffinity(0))
    if len(mine) < 2:
        assert cores(INTERRUPTS) == (None, None)
        return
    first, second = mine[:2]

    def columns(a: int, b: int) -> str:  # the disk's interrupts in b's column
        return INTERRUPTS.replace("CPU0       CPU1", f"CPU{a}       CPU{b}")

    assert cores(columns(first, second)) == (second, first)  # the disk's core is the target's
    assert cores(columns(second, first)) == (first, second)
    assert cores("") == (first, second)


def test_the_command_writes_each_run_with_the_machine_it_ran_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m bench --only disk``: a JSON line whose ``machine`` names the cores and their devices' interrupts."""
    out = tmp_path / "runs.jsonl"
    assert main(["--only", "disk", "--out", str(out)]) == 0
    (row,) = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    machine = row["machine"]
    assert {"target_core", "generator_core", "device_interrupts", "build"} <= set(machine), machine
    assert all(key.startswith("cpu") and n >= 0 for key, n in machine["device_interrupts"].items()), machine
    assert "results: " + str(out) in capsys.readouterr().out


def test_a_process_s_threads_are_told_apart_the_main_one_from_the_others() -> None:
    pid = 100
    before = {100: (1.0, 0.5, 10, 2), 101: (2.0, 1.0, 50, 1), 102: (0.1, 0.1, 5, 0)}
    # 102 ended meanwhile; 103 started since the first reading: all it used counts
    after = {100: (1.5, 0.75, 30, 4), 101: (2.5, 2.0, 150, 1), 103: (0.25, 0.0, 7, 1)}
    used_by = threads_used(pid, before, after)
    assert used_by["main"] == {"user": 0.5, "system": 0.25, "voluntary": 20, "involuntary": 2}
    assert used_by["others"] == {"user": 0.75, "system": 1.0, "voluntary": 107, "involuntary": 1}
    assert used_by["busiest"] == {"user": 0.5, "system": 1.0, "voluntary": 100, "involuntary": 0}
    mine = thread_times(os.getpid())
    assert os.getpid() in mine and mine[os.getpid()][0] > 0, mine


def test_the_new_cases_are_judged_against_their_own_targets() -> None:
    def run(name: str, p99: float, lost: int, unpersisted: int) -> dict[str, Any]:
        return {"name": name, "repeat": 1, "latency_ms": {"p50": 1.0, "p99": p99}, "send_lag_ms": {"p99": 1.0},
                "lost": lost, "unpersisted": unpersisted, "not_stored": unpersisted, "sent": 20000}

    lines = verdicts([run("server-pg-2000", 24.0, 0, 0), run("cluster-2000", 51.0, 3, 0)])
    assert "MET    server-pg-2000 (one server on PostgreSQL) p99 <= 25 ms: 24.0 ms" in lines
    assert "MET    server-pg-2000 0 unpersisted: 0 (not stored at all: 0 of 20000)" in lines
    assert "MISSED cluster-2000 (two workers, every group across both) p99 <= 50 ms: 51.0 ms" in lines
    assert "MISSED cluster-2000 0 lost: 3 of 20000 sends" in lines


async def run_matrix_case(name: str, env: dict[str, str]) -> None:
    """The matrix's case ``name`` (carrying ``env``: the bench clears the caller's ``SYNCLAB_*``)
    on the small load: nothing lost, unacknowledged or unstored."""
    case = next(c for c in matrix(1.0, 2, 0.02) if c.name == name)
    assert dict(case.env) == env
    async with asyncio.timeout(timeout(60)):
        row = await run_case(Case(case.name, case.target, LOAD, env=case.env), None)
    assert row["lost"] == 0 and row["deliveries"] == 160 and row["acked"] == 40, row
    assert row["unpersisted"] == 0 and row["not_stored"] == 0, row


def timed_run(name: str, p99: float, us: float) -> dict[str, Any]:
    """A made-up run of ``name`` for the verdicts: p50 0.5 ms, p99 and CPU per decision as given."""
    return {"name": name, "repeat": 1, "latency_ms": {"p50": 0.5, "p99": p99}, "send_lag_ms": {"p99": 1.0},
            "lost": 0, "unpersisted": 0, "not_stored": 0, "sent": 20000, "cpu_us_per_decision": {"target": us}}


async def test_the_crash_durability_case_runs_its_server_with_the_setting_and_loses_nothing() -> None:
    """``server-crash-2000``: the server with ``SYNCLAB_DURABILITY=crash``, judged on its latency
    and counts, and compared with the relay that does not sync either."""
    await run_matrix_case("server-crash-2000", {"SYNCLAB_DURABILITY": "crash"})
    lines = verdicts([timed_run("relay-2000", 2.0, 100.0), timed_run("server-crash-2000", 3.0, 150.0)])
    assert "MET    server-crash-2000 (SYNCLAB_DURABILITY=crash): 2,000/s p99 <= 25 ms: 3.0 ms" in lines
    assert "MET    server-crash-2000 (SYNCLAB_DURABILITY=crash): 2,000/s 0 unpersisted: 0" in lines
    assert "INFO   server-crash-2000 p99 over relay-2000's (neither syncs): 1.50x (3.0 vs 2.0 ms)" in lines
    assert "INFO   server-crash-2000 CPU per decision over relay-2000's: 1.50x (median of 1.50)" in lines


async def test_the_direct_commit_case_runs_its_server_without_the_journal_and_is_judged_against_the_floor() -> None:
    """``server-direct-2000``: the server with ``SYNCLAB_JOURNAL=off`` (each batch committed to
    SQLite, synced, before it is acknowledged); every decision it acked is read back from the
    database, and the verdicts hold it to issue 21's ratios against the relay that stores first."""
    await run_matrix_case("server-direct-2000", {"SYNCLAB_JOURNAL": "off"})
    lines = verdicts([timed_run("relay-fsync-2000", 2.0, 100.0), timed_run("server-direct-2000", 3.0, 160.0)])
    assert "MET    server-direct-2000 (SYNCLAB_JOURNAL=off): 2,000/s p99 <= 25 ms: 3.0 ms" in lines
    assert "MET    server-direct-2000 p99 <= 2x relay-fsync-2000's: 1.50x (3.0 vs 2.0 ms)" in lines
    assert ("MISSED server-direct-2000 CPU per decision <= 1.5x relay-fsync-2000's: 1.60x "
            "(median of 1.60, each from one repeat)") in lines


async def test_the_monitor_case_reads_every_row_stored_while_the_load_runs() -> None:
    """``server-monitor-2000``: a monitor reads the experiment throughout, as a lab's experimenter's
    page does; the run counts what it read, and the verdict gives the CPU against ``server-2000``."""
    case = next(c for c in matrix(1.0, 2, 0.02) if c.name == "server-monitor-2000")
    assert case.load is not None and case.load.monitor
    load = Load(LOAD.participants, LOAD.group_size, LOAD.rate, LOAD.duration, grace=LOAD.grace, monitor=True)
    async with asyncio.timeout(timeout(60)):
        row = await run_case(Case(case.name, case.target, load), None)
    assert row["lost"] == 0 and row["deliveries"] == 160 and row["unpersisted"] == 0, row
    watched = row["monitor"]
    assert watched is not None and watched["frames"] >= 1, row
    # the schedule's 40 writes stored 80 events, each a row the monitor was sent
    assert watched["rows"] >= row["writer"]["events"] == 80, row

    def run(name: str, us: float) -> dict[str, Any]:
        return {"name": name, "repeat": 1, "latency_ms": {"p50": 2.0, "p99": 5.0}, "send_lag_ms": {"p99": 1.0},
                "lost": 0, "unpersisted": 0, "not_stored": 0, "sent": 20000, "cpu_us_per_decision": {"target": us}}

    lines = verdicts([run("server-2000", 200.0), run("server-monitor-2000", 210.0)])
    assert "MET    server-monitor-2000 (a monitor open): 2,000/s p50 <= 3 ms: 2.0 ms" in lines
    assert "INFO   server-monitor-2000 CPU per decision over server-2000's: 1.05x (median of 1.05)" in lines


async def test_the_cluster_case_spreads_every_group_over_two_workers_and_loses_nothing(
    postgres_url: str, redis_url: str, redis_prefix: str
) -> None:
    """Two real workers on this machine's PostgreSQL and Redis: 20 participants, 2 s; every group
    has members on both workers, the workers take turns serving the groups, nothing is lost."""
    case = next(c for c in matrix(duration=2.0, idle=0, scale=0.05) if c.name == "cluster-2000")
    services = Services(redis=redis_url, database_url=postgres_url, prefix=redis_prefix)
    async with asyncio.timeout(timeout(60)):
        row = await run_case(case, None, services)
    assert row["participants"] == 20 and row["sent"] == 200, row
    assert row["lost"] == 0 and row["lost_deliveries"] == 0 and row["deliveries"] == 800, row
    assert row["unpersisted"] == 0 and row["not_stored"] == 0 and row["acked"] == 200, row
    assert row["errors"] == {}, row
    assert row["groups_served"] == [3, 2], row  # groups 0, 2, 4 on the first worker, 1 and 3 on the second
    assert row["threads_per_decision"] is None, row  # by thread: one process's only
    # CPU per delivered decision of every process kind; at this size Redis may use under a clock tick
    per = row["cpu_us_per_decision"]
    assert set(per) == {"target", "redis", "postgres", "postgres-bg"}, per
    assert per["target"] > 0 and per["postgres"] > 0 and per["redis"] >= 0, per
    lines = table([row]).splitlines()
    assert "srv us/d  redis us/d  pg us/d" in lines[0], lines[0]
    start = lines[0].index("srv us/d")  # the cells are right-aligned under their headings
    cells = lines[2][start : start + len("srv us/d  redis us/d  pg us/d")].split()
    assert len(cells) == 3 and all(cell.isdigit() for cell in cells), (lines[0], lines[2])
    assert any(line.startswith("cluster-2000: µs of CPU per delivered decision: 2 server process(es)") for line in lines)


def test_the_cpu_ratio_pairs_each_repeat_of_the_server_with_the_same_repeat_of_the_relay() -> None:
    def row(name: str, repeat: int, us: float) -> dict[str, Any]:
        return {"name": name, "repeat": repeat, "cpu_us_per_decision": {"target": us}}

    rows = [row("relay-fsync-2000", 1, 100.0), row("relay-fsync-2000", 2, 200.0),
            row("server-2000", 1, 150.0), row("server-2000", 2, 500.0), row("server-2000", 3, 999.0)]
    assert cpu_ratios(rows) == [1.5, 2.5]
    assert any(line.startswith("MISSED server CPU per decision") and "2.00x" in line for line in verdicts(rows))
    assert not any(line.startswith("INFO   server CPU") for line in verdicts(rows))
    framed = [*rows, row("relay-fsync-frames-2000", 1, 75.0), row("relay-fsync-frames-2000", 2, 250.0)]
    assert cpu_ratios(framed, "relay-fsync-frames-2000") == [2.0, 2.0]
    info = [line for line in verdicts(framed) if line.startswith("INFO   server CPU")]
    assert len(info) == 1 and "2.00x" in info[0], info
    assert any(line.startswith("MET    server CPU per decision") for line in verdicts(rows[:1] + rows[2:3]))
