"""Deadline policy: estimate a requestor's task time, project its finish,
and decide how many workers to add. Pure Python, no I/O: the pool's I/O
thread calls it on a timer and does the launching.

How it decides (per requestor with a tta, tightest tta first):

- Task time is a winsorized mean of the last WINDOW durations measured in
  the workers: a sample above OUTLIER_FACTOR x the median counts as that
  bound, and the first task of a fresh worker process (imports, cold
  caches) counts only while nothing else is known. So a slow first task
  cannot inflate the estimate, while the long tail of a skewed workload
  still counts. No step is taken on fewer than MIN_SAMPLES samples.
- Projected finish = now + remaining tasks x task time / workers + one
  task time (the last task's tail).
- Workers needed = remaining work / (time left x SAFETY - START_S - one
  task time, for the last task's tail). When
  that exceeds what the requestor has, the pool launches the difference in
  one step, then waits SETTLE for the new workers' effect before the next.
- Early in a batch the finished tasks are the short ones (the long ones
  are still running), so tasks running longer than the estimate count with
  the time they have run so far.
- Saturation, two signals. Before a step: if the machine's CPUs are already
  BUSY_SATURATED busy (from /proc/stat) *and* the pool's own workers want
  the CPU (each spends at least WORKER_CPU_BOUND of its time running or
  waiting to run, from /proc/<pid>/schedstat, so contention does not hide
  it), a new worker would only share the cores, so none is launched. Load
  from other programs does not stop growth for tasks that wait (I/O, sleep). After a step settles: if the pool's
  completion rate grew by less than SATURATION_GAIN of what the added
  workers should have brought, growth stops at that size. Either way the
  requestor's stats say "saturated" instead of processes piling up.
- Shrinking: a requestor projected to finish ahead of its tta that holds
  more than needed + SHRINK_SLACK workers lets the surplus drain (finish
  what they hold, take no new task) and retire, down to the pool's size.
"""

from __future__ import annotations

import collections
import math
import statistics
from typing import Deque, Optional, Tuple

# Durations kept per requestor for its task-time estimate.
WINDOW = 64
# Samples above this multiple of the median count as this multiple.
OUTLIER_FACTOR = 10.0
# Samples a requestor needs before the pool scales for it.
MIN_SAMPLES = 2
# Plan to finish within this share of the time left: margin for the noise
# of a shared machine and for the tail of a skewed batch.
SAFETY = 0.75
# Time a new worker takes to start serving, in seconds (interpreter start +
# imports); counted against the time it can contribute.
START_S = 0.15
# After a step, wait this long (and at least SETTLE_TASKS task times) before
# judging its effect or taking another step.
SETTLE_S = 0.3
SETTLE_TASKS = 4
# A step that brings less than this share of its proportional gain in
# completion rate marks the pool as saturated.
SATURATION_GAIN = 0.25


class TaskTimes:
    """Recent task durations of one requestor and the estimate from them."""

    def __init__(self) -> None:
        self._durations: Deque[float] = collections.deque(maxlen=WINDOW)
        self._warmups: Deque[float] = collections.deque(maxlen=WINDOW)
        self._estimate: Optional[float] = None

    def add(self, seconds: float, is_warmup: bool = False) -> None:
        """Record a task duration; is_warmup: a fresh worker's first task."""
        (self._warmups if is_warmup else self._durations).append(seconds)
        self._estimate = None

    @property
    def count(self) -> int:
        return len(self._durations) + len(self._warmups)

    def estimate_with_running(self, running: "list[float]") -> Optional[float]:
        """The estimate, raised by tasks that have run longer than it so far
        (their elapsed time counts as a sample: a lower bound of theirs)."""
        estimate = self.estimate()
        if estimate is None:
            return None
        longer = [t for t in running if t > estimate]
        if not longer:
            return estimate
        samples = self._durations or self._warmups
        return (estimate * len(samples) + sum(longer)) / (len(samples) + len(longer))

    def estimate(self) -> Optional[float]:
        """Winsorized mean task time in seconds; None before any sample."""
        if self._estimate is None:
            samples = self._durations or self._warmups
            if samples:
                cap = OUTLIER_FACTOR * statistics.median(samples)
                self._estimate = sum(min(d, cap) for d in samples) / len(samples)
        return self._estimate


def projected_finish(now: float, remaining: int, task_s: float, workers: int) -> float:
    """Epoch seconds at which `remaining` tasks end on `workers` workers."""
    if remaining <= 0:
        return now
    return now + remaining * task_s / max(1, workers) + task_s


def workers_needed(now: float, tta: float, remaining: int, task_s: float,
                   max_workers: int) -> int:
    """Workers that finish `remaining` tasks by tta, within max_workers."""
    usable = (tta - now) * SAFETY - START_S - task_s
    if usable <= task_s:
        return max_workers  # late or nearly: run at full speed
    return min(max_workers, max(1, math.ceil(remaining * task_s / usable)))


class RateMeter:
    """Completions per second over a sliding window (pool-wide)."""

    def __init__(self, maxlen: int = 4096) -> None:
        self._ticks: Deque[Tuple[float, int]] = collections.deque(maxlen=maxlen)

    def tick(self, when: float, count: int = 1) -> None:
        """count tasks completed at `when` (a chunk's arrive together)."""
        self._ticks.append((when, count))

    def rate(self, since: float, until: float) -> Optional[float]:
        """Completions per second in [since, until]; None if too few."""
        if until <= since:
            return None
        n = sum(c for t, c in self._ticks if since <= t <= until)
        if n < SETTLE_TASKS:
            return None
        return n / (until - since)


def is_saturated(rate_before: float, workers_before: int, rate_after: float,
                 workers_after: int) -> bool:
    """True if adding workers raised the rate by too little to be worth it."""
    if workers_after <= workers_before or rate_before <= 0:
        return False
    expected_gain = rate_before * (workers_after - workers_before) / workers_before
    return rate_after - rate_before < SATURATION_GAIN * expected_gain


# Workers beyond those needed that a requestor ahead of its tta keeps
# before it gives any back (hysteresis against growing and shrinking in turn).
SHRINK_SLACK = 1
# Share of all CPUs busy (any process) at which the machine counts as
# saturated: a new worker would only share cores with the ones running.
BUSY_SATURATED = 0.9
# Share of its time a worker spends running or runnable at which it counts
# as CPU-bound (it, not other programs, wants the cores).
WORKER_CPU_BOUND = 0.5
# Shortest interval over which a worker's CPU demand is measured.
CPU_WINDOW_S = 0.2


class WorkerCpu:
    """Mean CPU demand of a set of processes: the share of wall time each
    spent on a CPU or waiting in the run queue (/proc/<pid>/schedstat, in
    ns), measured over windows of at least CPU_WINDOW_S."""

    def __init__(self) -> None:
        self._last: "dict[int, tuple[float, float]]" = {}   # pid -> (cpu s, wall s)
        self._last_at = -1.0
        self.share: Optional[float] = None

    def sample(self, pids: "list[int]", now: float) -> Optional[float]:
        if now - self._last_at < CPU_WINDOW_S:
            return self.share
        self._last_at = now
        shares = []
        current = {}
        for pid in pids:
            try:
                with open(f"/proc/{pid}/schedstat", "rb") as f:
                    fields = f.read().split()
                cpu = (int(fields[0]) + int(fields[1])) * 1e-9
            except (OSError, IndexError, ValueError):
                continue
            current[pid] = (cpu, now)
            if pid in self._last:
                cpu0, t0 = self._last[pid]
                if now > t0:
                    shares.append((cpu - cpu0) / (now - t0))
        self._last = current
        self.share = sum(shares) / len(shares) if shares else None
        return self.share


class CpuMeter:
    """Machine-wide CPU busy share between successive samples (/proc/stat)."""

    def __init__(self, enabled: bool = True) -> None:
        # Off for workers on other machines (a Dask cluster): this machine's
        # load says nothing about theirs; the throughput check still works.
        self._last = self._read() if enabled else None
        self.enabled = self._last is not None
        self.busy: Optional[float] = None   # share in [0, 1] over the last interval

    @staticmethod
    def _read() -> Optional[tuple]:
        try:
            with open("/proc/stat", "rb") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None  # not Linux: the throughput check still works
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    def sample(self) -> Optional[float]:
        if not self.enabled:
            return None
        now = self._read()
        if now is not None and self._last is not None:
            total = now[0] - self._last[0]
            if total > 0:
                self.busy = 1.0 - (now[1] - self._last[1]) / total
        self._last = now
        return self.busy

    def is_saturated(self, worker_share: Optional[float]) -> bool:
        """Busy CPUs, kept busy by workers that compute (not wait)."""
        return (self.busy is not None and self.busy >= BUSY_SATURATED
                and worker_share is not None and worker_share >= WORKER_CPU_BOUND)
