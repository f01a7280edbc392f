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
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICK = os.sysconf("SC_CLK_TCK")  # /proc counts CPU time in these ticks a second

# (part, pattern of the command line). The Procfile names the workers `-n detect@%h` / `deliver@%h`
# (`detect-<FDA_RUN>@%h` in a stack of a bench's or test's own).
PARTS = (
    ("detect worker", re.compile(r"celery.*\bworker\b.*detect(-\w+)?@")),
    ("deliver worker", re.compile(r"celery.*\bworker\b.*deliver(-\w+)?@")),
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


def machine_ticks() -> tuple[int, int]:
    """(busy, all) CPU ticks of the whole machine so far, every core: busy is user, nice, system,
    irq, softirq and steal; all adds idle and iowait."""
    values = [int(v) for v in (PROC / "stat").read_text().splitlines()[0].split()[1:9]]
    total = sum(values)
    return total - values[3] - values[4], total


def processes() -> dict[int, tuple[int, str, int]]:
    """pid -> (parent pid, command name, CPU ticks used so far by all its threads)."""
    table = {}
    for entry in os.listdir(PROC):
        if not entry.isdigit():
            continue
        try:
            stat = (PROC / entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        # After the ")" that closes the name: the state, the parent pid, ... utime and stime are
        # fields 14 and 15 of man 5 proc.
        head, _, tail = stat.rpartition(")")
        rest = tail.split()
        table[int(entry)] = (int(rest[1]), head.partition("(")[2], int(rest[11]) + int(rest[12]))
    return table


def cmdline(pid: int) -> str | None:
    """A process's command line, its arguments joined by spaces; None when it has ended."""
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None


def snapshot() -> Snapshot:
    parts_of = {}
    for pid, (_, _, ticks) in processes().items():
        line = cmdline(pid)
        if line is not None:
            parts_of[pid] = (_part(pid, line), ticks / TICK)
    busy, total = machine_ticks()
    return Snapshot(processes=parts_of, busy=busy / TICK, total=total / TICK)


def parts(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds each part used between the two snapshots, most first."""
    used: dict[str, float] = {}
    for pid, (part, seconds) in after.processes.items():
        earlier = before.processes.get(pid)
        start = earlier[1] if earlier and earlier[0] == part else 0.0
        used[part] = used.get(part, 0.0) + max(0.0, seconds - start)
    return dict(sorted(used.items(), key=lambda item: -item[1]))


def stack_pids(root: int, database: str | None) -> set[int]:
    """The processes of a stack now: those below ``root`` (its runner), the PostgreSQL backends
    serving its ``database``, and the broker and Redis (shared with whoever else uses them, so
    counted whole: an upper bound). Call it before and after the work: a process counts if it
    is in either set."""
    table = processes()
    pids = descendants(table, root)
    for pid, (_, name, _) in table.items():
        if name in SERVICES - {"postgres"} or (database and name == "postgres" and f" {database} " in (cmdline(pid) or "")):
            pids.add(pid)
    return pids


def report(before: Snapshot, after: Snapshot, *, per: int, say, only: set[int] | None = None) -> dict[str, float]:
    """Print a table of CPU ms per job for each part (``per`` jobs were done), with the
    machine's busy share; returns the per-job figures. ``only``: count these processes alone
    (stack_pids: a stack's, leaving out a neighbour's work on a shared machine)."""
    if only is not None:
        before = Snapshot({pid: v for pid, v in before.processes.items() if pid in only}, before.busy, before.total)
        after = Snapshot({pid: v for pid, v in after.processes.items() if pid in only}, after.busy, after.total)
    used = parts(before, after)
    wall = (after.total - before.total) / (os.cpu_count() or 1)
    busy_share = (after.busy - before.busy) / max(after.total - before.total, 1e-9)
    per_job = {part: seconds * 1000 / max(per, 1) for part, seconds in used.items()}
    say(f"\nCPU per job, by process ({per} jobs in {wall:.1f} s; the machine was {busy_share:.0%} busy):\n")
    say("| part | CPU ms per job | share |")
    say("|---|---|---|")
    total = sum(per_job.values()) or 1.0
    for part, ms in per_job.items():
        if ms >= 0.05:
            say(f"| {part} | {ms:.1f} | {ms / total:.0%} |")
    say(f"| all | {total:.1f} | 100% |")
    return per_job


# Shared services: they serve a bench and whoever else uses them; neither a stack's nor others'.
SERVICES = {"postgres", "beam.smp", "redis-server", "epmd", "erl_child_setup", "inet_gethost"}


def descendants(table: dict[int, tuple[int, str, int]], root: int) -> set[int]:
    """The pids below ``root`` in ``table`` (processes()), children's children included."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            found.add(pid)
            todo.append(pid)
    return found


class CpuWindow:
    """CPU time over a stretch of wall time: a stack's (the processes below ``root``, and the
    PostgreSQL backends serving its ``database``), and the share of the machine that other
    processes took (neither the stack, nor this bench, nor the shared services): a neighbour's
    test run."""

    def __init__(self, root: int, database: str | None) -> None:
        self.root, self.database = root, database
        self.wall, self.busy, self.table = time.monotonic(), machine_ticks()[0], processes()

    def close(self) -> tuple[float, float]:
        """(the stack's CPU seconds, the others' share of the machine, 0..1). Afterwards
        ``by_part`` holds the CPU seconds of each part of the stack (PARTS) and of the shared
        broker and Redis (all their work, whoever asked for it)."""
        wall, busy, table = time.monotonic() - self.wall, machine_ticks()[0] - self.busy, processes()
        ours = descendants(self.table, self.root) | descendants(table, self.root)
        stack = bench = services = 0
        by_part: dict[str, int] = {}
        for pid, (_, name, ticks) in table.items():
            used = ticks - (self.table[pid][2] if pid in self.table else 0)
            if pid in ours or (self.database and name == "postgres" and f" {self.database} " in (cmdline(pid) or "")):
                stack += used
                part = _part(pid, cmdline(pid) or name)
                by_part[part] = by_part.get(part, 0) + used
            elif pid == os.getpid():
                bench += used
            elif name in SERVICES:
                services += used
                if name != "postgres":
                    part = f"{_part(pid, cmdline(pid) or name)}, shared"
                    by_part[part] = by_part.get(part, 0) + used
        self.by_part = {part: ticks / TICK for part, ticks in sorted(by_part.items(), key=lambda item: -item[1])}
        others = max(busy - stack - bench - services, 0)
        return stack / TICK, others / (wall * TICK * (os.cpu_count() or 1))


def cpu_model() -> str:
    """This machine's CPU and whether it has bfloat16 / AMX, for a bench's header: OpenVINO
    would infer in bfloat16 there unless a version pins f32 (detection/precision.py), so figures
    from such a CPU and from one without are not the same experiment."""
    try:
        info = (PROC / "cpuinfo").read_text()
    except OSError:
        return "CPU unknown"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "CPU unknown")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    extras = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]
    return f"{name} ({', '.join(extras) if extras else 'no bfloat16'})"
