"""Where the CPU went during a bench, process by process: the profile of a whole stack across its
processes (API, workers, S3, database, broker), read from /proc (Linux) before and after.

    before = cpu.snapshot()
    ...                      # the work
    cpu.report(before, cpu.snapshot(), per=photos, say=print)

Each process is put in a part by its command line (PARTS, first match wins); processes started
during the work count from zero, those that ended during it are lost (the pool processes of the
stack live throughout). The machine's busy share says whether the work was bound by the CPU (near
100 %) or by waiting (queues, round trips, sleeps).
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# (part, pattern of the command line). The Procfile names the workers `-n detect@%h` / `deliver@%h`.
PARTS = (
    ("detect worker", re.compile(r"celery.*\bworker\b.*detect@")),
    ("deliver worker", re.compile(r"celery.*\bworker\b.*deliver@")),
    ("beat", re.compile(r"celery.*\bbeat\b")),
    ("API (gunicorn)", re.compile(r"gunicorn")),
    ("S3 (weed)", re.compile(r"(^|/)weed\b")),
    ("PostgreSQL", re.compile(r"^postgres")),
    ("RabbitMQ", re.compile(r"beam\.smp|rabbitmq|epmd|erl_child_setup|inet_gethost")),
    ("Redis", re.compile(r"redis-server")),
    ("devstack / honcho", re.compile(r"devstack|honcho")),
)


@dataclass(frozen=True)
class Snapshot:
    processes: dict[int, tuple[str, float]]  # pid -> (part, CPU seconds so far)
    busy: float  # the machine's busy CPU seconds so far (all cores)
    total: float  # the machine's CPU seconds so far, idle included (all cores)


def _part(pid: int, cmdline: str) -> str:
    if pid == os.getpid():
        return "bench (the client)"
    for name, pattern in PARTS:
        if pattern.search(cmdline):
            return name
    return "other"


def _cpu_seconds(pid_dir: Path) -> float | None:
    try:
        fields = (pid_dir / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the ")" of the name: field 3 is the state, 14 and 15 are utime and stime (man 5 proc).
    return (int(fields[11]) + int(fields[12])) / TICKS


def snapshot() -> Snapshot:
    processes = {}
    for pid_dir in PROC.iterdir():
        if not pid_dir.name.isdigit():
            continue
        seconds = _cpu_seconds(pid_dir)
        if seconds is None:
            continue
        try:
            cmdline = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        pid = int(pid_dir.name)
        processes[pid] = (_part(pid, cmdline), seconds)
    values = [int(v) for v in (PROC / "stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal
    return Snapshot(processes=processes, busy=(total - idle) / TICKS, total=total / TICKS)


def parts(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds each part used between the two snapshots, most first."""
    used: dict[str, float] = {}
    for pid, (part, seconds) in after.processes.items():
        earlier = before.processes.get(pid)
        start = earlier[1] if earlier and earlier[0] == part else 0.0
        used[part] = used.get(part, 0.0) + max(0.0, seconds - start)
    return dict(sorted(used.items(), key=lambda item: -item[1]))


def report(before: Snapshot, after: Snapshot, *, per: int, say, unit: str = "job") -> dict[str, float]:
    """Print a table of CPU ms per ``unit`` for each part (``per`` units were done), with the
    machine's busy share; returns the per-unit figures."""
    used = parts(before, after)
    wall = (after.total - before.total) / (os.cpu_count() or 1)
    busy_share = (after.busy - before.busy) / max(after.total - before.total, 1e-9)
    per_unit = {part: seconds * 1000 / max(per, 1) for part, seconds in used.items()}
    say(f"\nCPU per {unit}, by process ({per} {unit}s in {wall:.1f} s; the machine was {busy_share:.0%} busy):\n")
    say(f"| part | CPU ms per {unit} | share |")
    say("|---|---|---|")
    total = sum(per_unit.values()) or 1.0
    for part, ms in per_unit.items():
        if ms >= 0.05:
            say(f"| {part} | {ms:.1f} | {ms / total:.0%} |")
    say(f"| all | {total:.1f} | 100% |")
    return per_unit
