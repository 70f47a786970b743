"""CPU seconds per kind of process while a command runs: where a test suite's machine time goes.

    python -m benchmarks.cpu_share [--every 2] [--json OUT] -- make test

Samples /proc every `--every` seconds, sums each process's user + system time by kind (worker, broker,
simulator, pytest workers, ...), and prints the table when the command ends (with its exit code).
Processes that start and end between two samples are missed, and a process's time after its last
sample is lost: the figures are a floor, good for comparing runs (session 35: the JIT compiler of
the test brokers stood out this way).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def kind(argv: list[str]) -> str:
    """What a process is, from its command line."""
    line = " ".join(argv)
    if "kafka.Kafka" in line:
        return "kafka broker"
    if "java" in os.path.basename(argv[0]):
        return "java (other)"
    if "pipeline worker" in line:
        return "touchline worker"
    if "-m pipeline " in line + " ":
        words = line.split("-m pipeline", 1)[1].split()
        return f"touchline {words[0]}" if words else "touchline"
    if "import sys;exec(eval(sys.stdin.readline()))" in line:
        return "pytest-xdist worker"
    if "pytest" in line:
        return "pytest"
    if "tools.run" in line:
        return "tools.run"
    return os.path.basename(argv[0]) or "?"


def _sample(seen: dict[tuple[int, str], float], totals: defaultdict[str, float], skip: set[int]) -> None:
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in skip:
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            argv = [a.decode(errors="replace") for a in Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0") if a]
        except OSError:  # gone meanwhile
            continue
        if not argv:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        used = (int(fields[11]) + int(fields[12])) / TICK
        key = (int(name), fields[19])  # pid and start time: a reused pid is another process
        totals[kind(argv)] += used - seen.get(key, 0.0)
        seen[key] = used


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=float, default=2.0, help="seconds between samples")
    parser.add_argument("--json", type=Path, help="also write the totals here")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    seen: dict[tuple[int, str], float] = {}
    totals: defaultdict[str, float] = defaultdict(float)
    _sample(seen, totals, {os.getpid()})
    totals.clear()  # what ran before the command is not its time
    started = time.monotonic()
    child = subprocess.Popen(command)
    while child.poll() is None:
        time.sleep(args.every)
        _sample(seen, totals, {os.getpid()})
    wall = time.monotonic() - started
    used = sum(totals.values())
    ranked = dict(sorted(totals.items(), key=lambda item: -item[1]))
    print(
        f"\n{' '.join(command)}: exit {child.returncode}, {wall:.0f} s wall, {used:.0f} CPU s sampled "
        f"({used / wall / (os.cpu_count() or 1):.0%} of {os.cpu_count()} cores)"
    )
    for name, seconds in ranked.items():
        if seconds >= 0.5:
            print(f"  {name:<28} {seconds:8.1f} s  {seconds / used:6.1%}")
    if args.json:
        args.json.write_text(json.dumps({"wall": wall, "cpu": ranked}, indent=1))
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
