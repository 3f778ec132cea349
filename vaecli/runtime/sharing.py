"""Sharing the CPU between vae processes: each one computing with torch leaves a file in a
registry folder (its pid, start time and the cores it may run on), and each picks its thread
count from how many registered processes share its cores, again every second at a step or batch
boundary (`tick`), so a run that started alone gives cores back when another starts and takes
them again when it ends.

Why threads and not OpenMP's spin: two processes whose threads each cover every core spin-wait
for each other's descheduled threads and both slow down many times over; GOMP_SPINCOUNT=1000
(what vaecli set before) cured that but cost a run alone 1.34-1.6x on CPUs whose threads
synchronise often (bench/RESULTS.md). With the cores split, no thread waits for a descheduled
sibling, so libgomp's default spin stays, and a run alone keeps its full speed.

Other programs are not in the registry: beside them, set trainer.threads / --threads (docs:
guide/sharing-cpu.md).
"""

from __future__ import annotations

import atexit
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

INTERVAL = 1.0  # seconds between looks at the registry (set_num_threads itself is cheap)


def fair_threads(cores: int, processes: int) -> int:
    """Threads for one of `processes` processes sharing `cores` cores: an equal share, at least one."""
    return max(1, cores // max(1, processes))


def registry() -> Path:
    """The folder of running processes' files: per user, in the temp folder (VAECLI_REGISTRY overrides)."""
    if os.environ.get("VAECLI_REGISTRY"):
        return Path(os.environ["VAECLI_REGISTRY"])
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"vaecli-{uid}" / "running"


def affinity() -> set[int]:
    """The cores this process may run on (taskset / cgroup cpusets included)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc; None where there is none), so
    that a recycled pid is not taken for the process that wrote a file."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _zombie(pid: int) -> bool:
    """A process that has exited but not been reaped by its parent (state Z): it computes nothing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process with our pid number: not ours
        return False
    if _zombie(pid):
        return False
    return started is None or _start_time(pid) in (None, started)


@dataclass
class Entry:
    pid: int
    started: str | None
    cores: set[int]


def _read(path: Path) -> Entry | None:
    try:
        pid_text, started, cores = path.read_text().split(";")
        return Entry(int(pid_text), started or None, {int(c) for c in cores.split(",") if c})
    except (OSError, ValueError):
        return None  # half-written, or removed while we read it


class CoreShare:
    """This process's place in the registry and its thread count (torch.set_num_threads)."""

    def __init__(self, folder: Path | None = None, interval: float = INTERVAL):
        self.folder = folder or registry()
        self.interval = interval
        self.cores = affinity()
        self.path = self.folder / str(os.getpid())
        self.joined = False
        self.adjust = True  # False: a thread count fixed by the user (still counted by the others)
        self._due = 0.0

    def join(self, adjust: bool = True) -> None:
        """Register (again) and, if `adjust`, take a fair share now."""
        self.adjust = adjust
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            text = f"{os.getpid()};{_start_time(os.getpid()) or ''};{','.join(map(str, sorted(self.cores)))}"
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.path)
            self.joined = True
        except OSError:  # a read-only temp folder: run as if alone, never fail a command for it
            self.joined = False
        self._due = 0.0
        self.tick()

    def leave(self) -> None:
        if self.joined:
            try:
                self.path.unlink()
            except OSError:
                pass
            self.joined = False

    def sharing(self) -> int:
        """Registered live processes whose cores overlap ours, this one included; stale files
        (a killed process) are removed."""
        count = 1
        try:
            paths = list(self.folder.iterdir())
        except OSError:
            return count
        for path in paths:
            if path == self.path or path.suffix == ".tmp":
                continue
            entry = _read(path)
            if entry is None:
                continue
            if not _alive(entry.pid, entry.started):
                try:
                    path.unlink()
                except OSError:
                    pass
                continue
            if entry.cores & self.cores:
                count += 1
        return count

    def threads(self) -> int:
        return fair_threads(len(self.cores), self.sharing() if self.joined else 1)

    def tick(self) -> None:
        """At most once per `interval`: set torch's threads to this process's share."""
        if not self.adjust:
            return
        now = time.monotonic()
        if now < self._due:
            return
        self._due = now + self.interval
        import torch

        want = self.threads()
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)


_share: CoreShare | None = None


def share() -> CoreShare:
    """The process's CoreShare (made on first use; it leaves the registry when the process exits)."""
    global _share
    if _share is None:
        _share = CoreShare()
        atexit.register(_share.leave)
    return _share


def tick() -> None:
    """Rebalance if this process has joined and a second has passed: call at step/batch ends."""
    if _share is not None and _share.joined:
        _share.tick()
