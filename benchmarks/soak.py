"""`make soak`: N simulated days at a realistic rate through the worker's stages, then a stop and a restart.

The simulator writes `--days` of traffic (`touchline simulate --duration <days>d --rate <rate>
--speed <speed>`) into fresh channel topics while two workers read them (fresh stores and consumer
groups): `--role ingest,analytics` and `--role journeys`. With the settings' windows the journey
stage keeps journeys for their 7-day repeat window (14 days when unresolved) and identities for 30
days, so its memory grows for weeks by design; in a process of its own it is measured apart and does
not hide whether the analytics state is flat. `--journey-windows short` (what `make soak` runs) gives
its worker windows of hours instead, so that its state reaches its plateau on day 2 and the soak
shows whether it then stays flat; `--journey-windows default` keeps the settings' windows (the
restore of a full week needs them).
The default speed (500 simulated seconds per second, ~3,000 events/s at peak) is meant to be one
the workers keep up with, so the soak measures steady state and not a backfill (with `--speed 0`
every partition is read at its own pace, the lowest watermark lags the others by days and the state
holds days more than in production). Every few seconds the workers' metrics are sampled, grouped by
the simulated day the lowest KPI watermark has reached (the journeys worker's by the day of the
newest event its state holds, `touchline_journey_event_time_seconds`: it may lag the analytics
stage, and its last day is sampled once it has applied all its input). Printed per simulated day: each worker's
RSS at the end of the day, contacts held in state, checkpoint bytes written during the day and the
longest event-loop stall of the analytics worker (histogram bucket bound), with the share of the
day its loop's thread was ready to run but waited for a CPU and the machine's highest load average
(two workers, the broker and the simulator share two cores: a stall there is not only the worker's
own). After the table, the analytics worker's cyclic-collector pauses of each day (seconds, full
collections, longest pause: every thread waits through them). Then each worker is
stopped with SIGINT (time to exit) and started again (time until it holds partitions).

`--journey-builders N` runs the journeys worker with the split journey stage (a resolver and N
builder partitions, `TOUCHLINE_JOURNEY_BUILDERS`); its contacts/s column is then the resolver's
(every record passes it), and the builders' busy time is printed after the table. The split stage
needs the identities kept past the journeys: with short windows their retention is 9 hours.

Targets (issue 10, the analytics worker; issue 11, the journeys worker with short windows): RSS on
day 4 <= 1.1 x day 2 and <= 1.5 GB; stop <= 5 s; restart <= 10 s.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import click

from benchmarks.bench import free_port, fresh_topics, metrics, raw_metrics, start_worker
from tools import broker

DAY_MS = 86_400_000
START = "2026-03-02T00:00:00Z"
START_MS = 1_772_409_600_000  # START in epoch ms


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def histogram(m: dict[str, float], name: str) -> dict[float, float]:
    """Cumulative bucket counts (upper bound -> count) of a histogram, summed over its other labels."""
    buckets: dict[float, float] = {}
    for k, v in m.items():
        if k.startswith(f"{name}_bucket"):
            bound = float(k.split('le="')[1].split('"')[0])
            buckets[bound] = buckets.get(bound, 0.0) + v
    return buckets


def collector(m: dict[str, float]) -> tuple[float, float, dict[float, float]]:
    """The cyclic collector's pauses so far (`touchline_gc_pause_seconds`): seconds in all, full
    collections, and the cumulative buckets over every generation."""
    seconds = sum(v for k, v in m.items() if k.startswith("touchline_gc_pause_seconds_sum"))
    full = m.get('touchline_gc_pause_seconds_count{generation="2"}', 0.0)
    return seconds, full, histogram(m, "touchline_gc_pause_seconds")


def longest_new(before: dict[float, float], after: dict[float, float]) -> float:
    """Bound of the bucket holding the longest observation made between two samples of a cumulative
    histogram: the smallest bound whose count grew by as much as +Inf's (0 when none was made)."""
    grew = {b: n - before.get(b, 0.0) for b, n in after.items()}
    every = grew.get(float("inf"), 0.0)
    return min((b for b, n in grew.items() if n == every), default=0.0) if every else 0.0


def wait_partitions(url: str, process: subprocess.Popen[bytes], timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise click.ClickException("the worker exited")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                health = json.loads(response.read())
            if health.get("assigned_partitions", 0) > 0:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.1)
    raise click.ClickException(f"no partitions after {timeout:.0f} s")


# the journey state's horizons: a journey is evicted `keep` after the repeat window (resolved) or the
# dormancy (unresolved); its customer's identifiers `identity` after their newest event once no
# journey holds them. "short" puts the plateau on day 2, so that day 4 / day 2 compares two days on
# it: in `benchmarks/journeys.py --days 3.5` (in process, no lag) it held 33,672 contact records at
# the end of day 2 and 33,673 at the end of day 3. "day" (`make soak`'s until session 19: 12 hours,
# 1 day, 6 hours, 12 hours) reaches it only on day 3: 72,199 then 79,867 records in a 4-day run,
# and 1.08-1.17 day 4 / day 2 RSS (highest samples) over ten `make soak` runs in sessions 16-20, against
# 1.01-1.07 day 4 / day 3.
JOURNEY_WINDOWS: dict[str, dict[str, str]] = {
    "default": {},
    "short": {
        "TOUCHLINE_JOURNEY_REPEAT_WINDOW_DAYS": "0.25",
        "TOUCHLINE_JOURNEY_DORMANCY_DAYS": "0.25",
        "TOUCHLINE_JOURNEY_KEEP_HOURS": "3",
        "TOUCHLINE_JOURNEY_IDENTITY_RETENTION_DAYS": "0.25",
    },
    "day": {
        "TOUCHLINE_JOURNEY_REPEAT_WINDOW_DAYS": "0.5",
        "TOUCHLINE_JOURNEY_DORMANCY_DAYS": "1",
        "TOUCHLINE_JOURNEY_KEEP_HOURS": "6",
        "TOUCHLINE_JOURNEY_IDENTITY_RETENTION_DAYS": "0.5",
    },
}


@click.command()
@click.option("--days", default=4, show_default=True, help="Simulated days.")
@click.option("--rate", default=4000, show_default=True, help="Simulator --rate (new contacts per hour at peak).")
@click.option(
    "--customers",
    default=20_000,
    show_default=True,
    help="Simulator --customers (the known-customer population new issues are drawn from).",
)
@click.option("--speed", default=500.0, show_default=True, help="Simulator --speed (0: as fast as possible).")
@click.option("--partitions", default=4, show_default=True)
@click.option("--sample-seconds", default=5.0, show_default=True)
@click.option(
    "--journey-identity-days",
    type=float,
    default=None,
    help="The journeys worker's TOUCHLINE_JOURNEY_IDENTITY_RETENTION_DAYS (default: --journey-windows's, "
    "0.5 or 30): with default windows and 1, a soak of two weeks shows the journey state reach its plateau.",
)
@click.option(
    "--journey-windows",
    type=click.Choice(sorted(JOURNEY_WINDOWS)),
    default="short",
    show_default=True,
    help="short: the journeys worker runs with a 6-hour repeat window, a 6-hour dormancy, a 3-hour retention "
    "margin and 6-hour identity retention, so that its state plateaus on day 2; day: 12 hours, 1 day, 6 hours, "
    "12 hours (plateau on day 3); default: the settings' (7 days, 14 days, 24 hours, 30 days).",
)
@click.option(
    "--journey-builders",
    default=0,
    show_default=True,
    help="The journeys worker's TOUCHLINE_JOURNEY_BUILDERS (0: the single journey stage).",
)
def main(
    days: int,
    rate: int,
    customers: int,
    speed: float,
    partitions: int,
    sample_seconds: float,
    journey_identity_days: float | None,
    journey_windows: str,
    journey_builders: int,
) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="touchline-soak-"))
    finished = False
    data = workdir / "broker"
    bootstrap = broker.start(data, port=free_port(), controller_port=free_port())
    producer: subprocess.Popen[bytes] | None = None
    workers: dict[str, subprocess.Popen[bytes]] = {}
    try:
        fresh_topics(bootstrap, partitions)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOUCHLINE_")}
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            TOUCHLINE_DATA_DIR=str(workdir / "data"),
            TOUCHLINE_APP_ID=f"touchline-soak-{uuid.uuid4().hex[:6]}",
            TOUCHLINE_TOPIC_PARTITIONS=str(partitions),
            TOUCHLINE_SLA_CLOCK="event",
            TOUCHLINE_HISTORY_SINCE="2026-01-01T00:00:00Z",
        )
        # the journey stage keeps every journey for its repeat window (7 days) and identities for 30:
        # its memory grows for a week by design, so it runs in a process of its own (with a store of
        # its own: embedded ClickHouse allows one process per store) and is reported apart
        ports = {"analytics": free_port(), "journeys": free_port()}
        envs = {"analytics": env, "journeys": {**env, "TOUCHLINE_DATA_DIR": str(workdir / "data-journeys")}}
        envs["journeys"].update(JOURNEY_WINDOWS[journey_windows])
        if journey_builders:
            envs["journeys"]["TOUCHLINE_JOURNEY_BUILDERS"] = str(journey_builders)
            if journey_windows == "short":  # the split stage keeps identities past the journeys (config)
                envs["journeys"]["TOUCHLINE_JOURNEY_IDENTITY_RETENTION_DAYS"] = "0.375"
        if journey_identity_days is not None:
            envs["journeys"]["TOUCHLINE_JOURNEY_IDENTITY_RETENTION_DAYS"] = str(journey_identity_days)
        roles = {"analytics": "ingest,analytics", "journeys": "journeys"}
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}

        launched: dict[str, float] = {}

        def start(name: str, log: str) -> float:
            started = launched[name] = time.monotonic()
            workers[name] = start_worker(envs[name], ports[name], roles[name], workdir / log)
            wait_partitions(urls[name], workers[name], 300)
            return time.monotonic() - started

        for name in roles:
            start(name, f"{name}.log")
        truth = workdir / "truth.jsonl"
        with (workdir / "simulate.log").open("wb") as out:
            producer = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "simulate", "--seed", "1", "--start", START,
                 "--duration", f"{days}d", "--rate", str(rate), "--customers", str(customers), "--speed", str(speed), "--quiet", "--truth", str(truth)],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        click.echo(
            f"soak: {days} simulated days at --rate {rate} --customers {customers} --speed {speed:g} -> worker `--role ingest,analytics` "
            f"and worker `--role journeys` ({journey_windows} journey windows"
            f"{f', split: {journey_builders} builders' if journey_builders else ''}; logs in {workdir})"
        )
        per_day: dict[int, dict[str, float]] = {}
        # the journeys worker's samples, by the simulated day of the newest event its state holds (not
        # the analytics watermark's: when it lags, its "day 2" would otherwise hold day 1's state)
        journey_days: dict[int, dict[str, float]] = {}

        def journey_sample(j: dict[str, float]) -> tuple[int, dict[str, float]]:
            newest_ms = j.get("touchline_journey_event_time_seconds", 0.0) * 1000
            jday = int((newest_ms - START_MS) // DAY_MS) + 1 if newest_ms else 0
            jrow = journey_days.setdefault(jday, {})
            jrow["journeys_rss_mb"] = rss_mb(workers["journeys"].pid)
            jrow["journeys_rss_max_mb"] = max(jrow.get("journeys_rss_max_mb", 0.0), jrow["journeys_rss_mb"])
            jrow["journey_nodes"] = j.get('touchline_journey_state{what="identity_nodes"}', 0.0)
            jrow["journey_journeys"] = j.get('touchline_journey_state{what="journeys"}', 0.0)
            jrow["journey_contacts"] = j.get('touchline_journey_state{what="contacts"}', 0.0)
            # where the journeys worker's memory is: its embedded ClickHouse, and Python objects alive
            jrow["journeys_engine_mb"] = j.get("touchline_clickhouse_resident_bytes", 0.0) / 1e6
            jrow["journey_records"] = sum(v for k, v in j.items() if k.startswith("touchline_journey_records_total"))
            jrow["journey_busy_s"] = j.get("touchline_journey_round_seconds_total", 0.0)
            jrow["builder_busy_s"] = j.get("touchline_journey_builder_round_seconds_total", 0.0)
            jrow["resolver_loop_s"] = j.get("touchline_journey_resolver_loop_seconds_total", 0.0)
            return jday, jrow

        previous_bytes = 0.0
        previous_stalls: dict[float, float] = {}
        previous_gc: tuple[float, float, dict[float, float]] | None = None
        previous_wait: tuple[float, float] | None = None  # (loop thread's CPU wait total, monotonic)
        produced: int | None = None
        while True:
            time.sleep(sample_seconds)
            for name, process in workers.items():
                if process.poll() is not None:
                    raise click.ClickException(f"the {name} worker exited; see {workdir / (name + '.log')}")
            if produced is None and producer.poll() is not None:
                if producer.returncode != 0:
                    raise click.ClickException(f"the simulator failed; see {workdir / 'simulate.log'}")
                produced = int(json.loads(truth.read_text().splitlines()[-1])["messages_delivered"])
                click.echo(f"  simulator done: {produced} messages")
            try:
                m = metrics(urls["analytics"], timeout=30)
                raw = raw_metrics(urls["analytics"])
                j = raw_metrics(urls["journeys"])
            except OSError as error:  # a busy worker answers late: a missing sample, not a failure
                click.echo(f"  (no sample: {error})")
                continue
            lag = m.get("touchline_kpi_watermark_lag_seconds", 0.0)
            if not lag:
                continue
            day = int(((time.time() - lag) * 1000 - START_MS) // DAY_MS) + 1
            stalls = histogram(raw, "touchline_loop_stall_seconds")
            longest_bucket = longest_new(previous_stalls, stalls)
            previous_stalls = stalls
            gc_seconds, gc_full, gc_buckets = collector(raw)
            written = m.get("touchline_checkpoint_bytes_total", 0.0)
            row = per_day.setdefault(day, {"checkpoint_mb": 0.0, "stall_le_s": 0.0, "cpu_wait_s": 0.0, "wall_s": 0.0})
            waited, sampled = m.get("touchline_loop_cpu_wait_seconds_total", 0.0), time.monotonic()
            if previous_wait is not None:
                row["cpu_wait_s"] += waited - previous_wait[0]
                row["wall_s"] += sampled - previous_wait[1]
            previous_wait = (waited, sampled)
            row["load_max"] = max(row.get("load_max", 0.0), os.getloadavg()[0])
            row["rss_mb"] = rss_mb(workers["analytics"].pid)
            row["rss_max_mb"] = max(row.get("rss_max_mb", 0.0), row["rss_mb"])
            row["contacts"] = m.get("touchline_state_contacts", 0.0)
            row["clickhouse_mb"] = m.get("touchline_clickhouse_memory_bytes", 0.0) / 1e6
            row["engine_mb"] = m.get("touchline_clickhouse_resident_bytes", 0.0) / 1e6
            row["checkpoint_mb"] += (written - previous_bytes) / 1e6
            row["stall_le_s"] = max(row["stall_le_s"], longest_bucket)
            if previous_gc is not None:  # over the same samples as the CPU wait's wall time
                row["gc_s"] = row.get("gc_s", 0.0) + gc_seconds - previous_gc[0]
                row["gc_full"] = row.get("gc_full", 0.0) + gc_full - previous_gc[1]
                row["gc_le_s"] = max(row.get("gc_le_s", 0.0), longest_new(previous_gc[2], gc_buckets))
            previous_gc = (gc_seconds, gc_full, gc_buckets)
            row["events"] = m.get("touchline_events_analysed_total", 0.0)
            previous_bytes = written
            jday, jrow = journey_sample(j)
            click.echo(
                f"  day {day}: analytics rss {row['rss_mb']:.0f} MB (chDB tracked {row['clickhouse_mb']:.0f}, resident {row['engine_mb']:.0f}), contacts {row['contacts']:.0f}, "
                f"analysed {row['events']:.0f}, outputs waiting {m.get('touchline_outbox_pending', 0.0):.0f}, checkpoints {row['checkpoint_mb']:.1f} MB; "
                f"journeys (day {jday}) rss {jrow['journeys_rss_mb']:.0f} MB (chDB resident {jrow['journeys_engine_mb']:.0f}), "
                f"contacts {jrow['journey_contacts']:.0f}, "
                f"records {jrow['journey_records']:.0f}"
            )
            if (
                produced is not None
                and m.get("touchline_events_analysed_total", 0.0) >= m.get("touchline_events_valid_total", 1.0)
                and m.get("touchline_events_consumed_total", 0.0) >= produced
            ):
                break
        # the journey stage may still be reading the analytics stage's last records: its last day is
        # measured once it has applied them (no new record over two samples)
        caught_up_from = idle_since = time.monotonic()
        records_before = -1.0
        while time.monotonic() - idle_since < 2 * sample_seconds and time.monotonic() - caught_up_from < 300:
            time.sleep(sample_seconds)
            try:
                j = raw_metrics(urls["journeys"])
            except OSError:
                continue
            jday, jrow = journey_sample(j)
            if jrow["journey_records"] != records_before:
                idle_since, records_before = time.monotonic(), jrow["journey_records"]
                click.echo(f"  journeys (day {jday}): catching up, records {jrow['journey_records']:.0f}")
        stops: dict[str, float] = {}
        exits: dict[str, int] = {}
        for name, process in workers.items():
            started = time.monotonic()
            os.killpg(process.pid, signal.SIGINT)
            exits[name] = process.wait(600)
            stops[name] = time.monotonic() - started
        restarts = {"analytics": start("analytics", "analytics-restart.log")}
        # the analytics partitions are assigned at once and restored in the background, paused:
        # reading resumes when every one is restored (timed before the journeys worker starts)
        began = launched["analytics"]
        while metrics(urls["analytics"], timeout=30).get("touchline_restore_seconds_count", 0.0) < 6 * partitions:
            if time.monotonic() - began > 300:
                raise click.ClickException("the analytics partitions were not restored in 300 s")
            time.sleep(0.1)
        reading = time.monotonic() - began
        restarts["journeys"] = start("journeys", "journeys-restart.log")
        time.sleep(10)
        rss_after = {name: rss_mb(process.pid) for name, process in workers.items()}

        click.echo(
            "\nsimulated day | analytics RSS MB (last sample; highest) | chDB MB tracked; resident | contacts in state | checkpoint MB written | longest loop stall <= s"
            " | loop thread waiting for a CPU; load average (highest) | journeys RSS MB (last; highest) | journey contacts; identity nodes; journeys | journey contacts/s busy"
        )
        done = {"journey_records": 0.0, "journey_busy_s": 0.0}

        def rate_of(r: dict[str, float]) -> float:
            """The journey stage's contact records per second spent in its rounds, over the day."""
            records, busy = (r.get(k, 0.0) - done[k] for k in ("journey_records", "journey_busy_s"))
            done.update({k: r.get(k, 0.0) for k in done})
            return records / busy if busy > 0 else 0.0

        def share(r: dict[str, float]) -> float:
            """Of the day's wall time, the share the analytics loop's thread waited for a CPU."""
            return r["cpu_wait_s"] / r["wall_s"] if r["wall_s"] > 0 else 0.0

        empty: dict[str, float] = {}
        for day in sorted(set(per_day) | set(journey_days)):
            r, jr = per_day.get(day, empty), journey_days.get(day, empty)
            analytics = (
                f"{r['rss_mb']:>22.0f}; {r['rss_max_mb']:>7.0f} | {r['clickhouse_mb']:>6.0f}; {r['engine_mb']:>5.0f} | "
                f"{r['contacts']:>17.0f} | {r['checkpoint_mb']:>21.1f} | {r['stall_le_s']:>24} | "
                f"{share(r):>30.0%}; {r.get('load_max', 0.0):>20.1f}"
                if r
                else f"{'-':>31} | {'-':>13} | {'-':>17} | {'-':>21} | {'-':>24} | {'-':>52}"
            )
            journeys = (
                f"{jr['journeys_rss_mb']:>6.0f}; {jr['journeys_rss_max_mb']:>6.0f} | {jr['journey_contacts']:>8.0f}; "
                f"{jr['journey_nodes']:>8.0f}; {jr['journey_journeys']:>8.0f} | {rate_of(jr):>9.0f}"
                if jr
                else "-"
            )
            click.echo(f"{day:>13} | {analytics} | {journeys}")
        if journey_builders and journey_days:
            last_j = journey_days[max(journey_days)]
            click.echo(
                f"split journey stage: resolver busy {last_j['journey_busy_s']:.0f} s, builders busy "
                f"{last_j['builder_busy_s']:.0f} s for {last_j['journey_records']:.0f} contact records "
                f"({last_j['journey_records'] / max(1e-9, last_j['builder_busy_s']):.0f} contacts/s over the builders' rounds); "
                f"the resolver's rounds held the loop themselves {last_j['resolver_loop_s']:.1f} s "
                f"({last_j['journey_records'] / max(1e-9, last_j['resolver_loop_s']):.0f} records/s of that time)"
            )
        for day, r in sorted(per_day.items()):
            if r.get("wall_s") and "gc_s" in r:
                click.echo(
                    f"analytics worker's cyclic collector, day {day}: {r['gc_s']:.1f} s of {r['wall_s']:.0f} s "
                    f"({r['gc_s'] / r['wall_s']:.1%}), {r['gc_full']:.0f} full collections, longest pause <= {r['gc_le_s']} s"
                )
        if 2 in per_day and 4 in per_day:  # simulated days count from 1 (a first sample may fall before: 0)
            d2, d4 = per_day[2]["rss_max_mb"], per_day[4]["rss_max_mb"]
            # a day's highest sample catches transient peaks (batches in flight, the embedded engine
            # merging): 1.03-1.17 over six runs in sessions 18-19, while the days' last samples
            # (midnight, quiet traffic: the state carried over) gave 0.97-1.03
            last2, last4 = per_day[2]["rss_mb"], per_day[4]["rss_mb"]
            click.echo(
                f"analytics RSS, highest sample of day 4 / of day 2: {d4 / d2:.2f} (target <= 1.10); day 4: "
                f"{d4:.0f} MB (target <= 1536); last sample of day 4 / of day 2: {last4 / last2:.2f}"
            )
        if journey_windows in ("short", "day") and 2 in journey_days and 4 in journey_days:
            # with "short" day 2 is on the plateau (JOURNEY_WINDOWS); with "day" only day 3 is
            j2, j4 = journey_days[2], journey_days[4]
            click.echo(
                f"journeys RSS, highest sample of day 4 / of day 2: "
                f"{j4['journeys_rss_max_mb'] / j2['journeys_rss_max_mb']:.2f} (target <= 1.10); day 4: "
                f"{j4['journeys_rss_max_mb']:.0f} MB (target <= 1536); last sample of day 4 / of day 2: "
                f"{j4['journeys_rss_mb'] / j2['journeys_rss_mb']:.2f}; contacts held at the end of day 4 / of day 2: "
                f"{j4['journey_contacts'] / max(1.0, j2['journey_contacts']):.2f}"
            )
            if 3 in journey_days:
                j3 = journey_days[3]
                click.echo(
                    f"journeys, day 4 / day 3: RSS highest sample {j4['journeys_rss_max_mb'] / j3['journeys_rss_max_mb']:.2f}, "
                    f"contacts held {j4['journey_contacts'] / max(1.0, j3['journey_contacts']):.2f}"
                )
        # with the settings' windows resolved journeys are evicted after the repeat window (7 days) and the
        # retention margin (1 day); unresolved ones after 14 days of dormancy; identities after their retention
        full_days = [day for day in sorted(journey_days) if 1 <= day <= days]
        if journey_windows == "default" and len(full_days) >= 2 and full_days[-1] >= 10:
            last, earlier = full_days[-1], max(2, full_days[-1] - 3)
            j_last, j_earlier = journey_days[last]["journeys_rss_max_mb"], journey_days[earlier]["journeys_rss_max_mb"]
            click.echo(
                f"journeys RSS, highest sample of day {last} / of day {earlier}: {j_last / j_earlier:.2f} "
                f"(flat: <= 1.10); day {last}: {j_last:.0f} MB"
            )
        for name in roles:
            click.echo(
                f"{name} worker: graceful stop {stops[name]:.1f} s (target <= 5, exit code {exits[name]}); "
                f"restart to partitions "
                f"{restarts[name]:.1f} s (target <= 10); RSS 10 s after the restart {rss_after[name]:.0f} MB"
            )
        click.echo(f"analytics worker: restart to reading every partition (restored) {reading:.1f} s")
        restore = metrics(urls["journeys"], timeout=30).get("touchline_journey_restore_seconds")
        click.echo(f"journey restore (touchline_journey_restore_seconds): {restore} s")
        said = [
            line
            for line in (workdir / "journeys-restart.log").read_text().splitlines()
            if "state restored" in line or "partition(s) restored" in line
        ]
        if said:
            click.echo(f"  journeys worker log: {said[-1].split('] ')[-1]}")
        finished = True
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
            producer.wait()
        for process in workers.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        broker.stop(data)
        if finished:  # kept after a failure, for its logs; a soak's broker and stores take 2-5 GB
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
