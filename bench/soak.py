"""Soak run: one Pool under a random mix of work and worker kills.

Not part of CI's assertions and not a speed benchmark: it runs for minutes
and checks that nothing is lost, duplicated, leaked or wedged.

What it does
  One ``Pool()`` (built-in worker, ``--workers`` processes, default 2,
  ``max_retries=1``). A warm-up batch, then ``--warmup`` seconds of the full
  mix (default 10 % of the run, 5 to 60 s; not measured), then
  ``--minutes`` (default 10; ``--quick``: 0.5) of the same mix, measured. In
  each phase three driver threads keep the pool busy:

  - two Sprint drivers: a Sprint (half of them with init_data), tasks
    submitted in a few chunks while its results are read
    (``yield_results(return_exceptions=True)``);
  - one Batch driver: ``BatchManager(pool, tasks).batch`` (half with
    init_data), ``start()``, ``list_results(return_exceptions=True)``.

  At the end of a phase each driver finishes its requestor, the kills stop
  and the pool is let back to its size, so that the samples below are
  taken with nothing in flight.

  Each requestor gets 50-400 tasks, a random mix of: small tasks (a tuple
  back, checked; with init_data, the worker's init tag is checked too),
  numpy tasks (int64 arrays of 16 to 262,144 elements there, the largest
  in lent shared memory, and back either doubled or summed: checked), tasks that raise ValueError, short sleeps
  (1-20 ms) and a few long ones (0.2-0.8 s), so that kills land mid-task.
  A killer thread sends SIGKILL to a random ``pool.pids`` entry every
  ``--kill-every`` seconds (uniform in [0.5x, 1.5x], default 3 s), choosing only
  workers that have listened for at least 0.5 s (killing one still
  starting would test the start-failure path instead).

Checks (summary at the end)
  Accounting (exit status 1 if one fails):
  - every submitted task has exactly one outcome: no duplicate, none
    missing, no outcome for an unknown task;
  - every outcome is what the task asked for: the right result, the
    planned ValueError (phase "task"), or, after a kill, a TaskError of
    phase "worker died" (or "initializer" with WorkerDied, when a worker
    died twice in one requestor's initializer); nothing else;
  - every requestor's stats add up (done + failed == submitted);
  - the pool still answers after the run (a final checked batch).
  Resources (exit status 2 if one fails and the accounting passed):
  - RSS (/proc/<pid>/status VmRSS) of the client and of the largest
    worker, sampled after the warm-up and at the end (after a final
    batch): the end may exceed the start by at most max(50 %,
    ``--rss-slack-mib``, default 32 MiB);
  - the client's open fds (/proc/self/fd) after the warm-up and at the end
    are equal, memfds left out (lent memory kept for reuse), and after
    ``pool.close()`` equal to those before the Pool was made, memfds
    included;
  - after close, no worker process is left and no socket file of any
    worker seen during the run.
  A watchdog (warm-up + run time + 3 min) dumps the stacks and exits 3 on a hang.

Usage
  python bench/soak.py                 # 10 minutes (+ 60 s warm-up)
  python bench/soak.py --quick         # 30 s smoke run (+ 5 s warm-up)
  python bench/soak.py --minutes 60 --workers 4 --kill-every 1 --seed 7
  (``--json``: one JSON document instead of the text summary.)
"""

from __future__ import annotations

import collections
import gc
import logging
import os
import random
import signal
import sys
import threading
import time
from typing import Any, Dict, List, Optional

import numpy as np

from swarm import TaskError, _runtime
from swarm._core.recvbuf import cached_bytes
from swarm._core.shm import lent_stats
from swarm.client import BatchManager, Pool, Sprint

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as h  # noqa: E402

RESULT_WAIT_S = 120.0     # no result for this long: the run is wedged
SETTLE_S = 20.0           # wait for the pool to be back at size at the end
MIB = 1024 * 1024


# ---------------------------------------------------------------- tasks
# Run in the workers: the built-in worker loads this script (as
# __swarm_main__) the first time a task names one of these.

_INIT_TAG: Optional[str] = None


def soak_init(tag: str) -> None:
    global _INIT_TAG
    _INIT_TAG = tag


def t_small(key: int, x: int) -> tuple:
    return (key, x * 2, _INIT_TAG)


def t_array(key: int, a: np.ndarray, back_whole: bool) -> tuple:
    return (key, a * 2 if back_whole else int(a.sum()))


def t_raise(key: int) -> None:
    raise ValueError(f"planned failure of task {key}")


def t_sleep(key: int, seconds: float) -> tuple:
    time.sleep(seconds)
    return (key, seconds)


# ---------------------------------------------------------------- ledger

class Ledger:
    """Every task submitted, and every outcome seen, by a run-wide key.

    Kept small, so that it does not show in the client's RSS: a task's
    check data is dropped at its first outcome; one byte per task counts
    its outcomes.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen = bytearray()                        # key -> outcomes so far (max 255)
        self.expected: Dict[int, tuple] = {}           # key -> check data, until its outcome
        self.kinds = collections.Counter()             # submitted by kind
        self.classes = collections.Counter()           # outcome classes
        self.error_phases = collections.Counter()      # TaskError phase (exc type)
        self.wrong: List[str] = []                     # first few wrong outcomes
        self.unknown = 0                               # outcomes for no known key
        self.requestors = 0                            # requestors finished
        self.bad_stats: List[str] = []                 # requestors whose stats do not add up

    @property
    def submitted(self) -> int:
        return len(self.seen)

    def finished(self, requestor: Any) -> None:
        """Check a requestor's stats once its results are all in (and let
        go of it: a Batch holds its results)."""
        stats = requestor.stats
        with self.lock:
            self.requestors += 1
            if (stats["tasks_done"] + stats["tasks_failed"] != stats["tasks_submitted"]
                    or stats["tasks_left"] != 0) and len(self.bad_stats) < 5:
                self.bad_stats.append(f"{requestor!r}: {stats}"[:300])

    def make_tasks(self, rng: random.Random, n: int, tag: Optional[str]) -> tuple:
        tasks, keys = [], []
        with self.lock:
            for _ in range(n):
                key = len(self.seen)
                self.seen.append(0)
                roll = rng.random()
                if roll < 0.55:
                    x = rng.randrange(1 << 30)
                    task, check = (t_small, key, x), ("small", x * 2, tag)
                elif roll < 0.75:
                    # 2 MiB and more travel in lent shared memory
                    size = rng.choice((16, 1024, 65536, 262144))
                    a = np.arange(size, dtype=np.int64) + key
                    whole = rng.random() < 0.5
                    task, check = (t_array, key, a, whole), ("array", int(a.sum()) * 2, whole)
                elif roll < 0.85:
                    task, check = (t_raise, key), ("raise",)
                elif roll < 0.99:
                    s = rng.uniform(0.001, 0.02)
                    task, check = (t_sleep, key, s), ("sleep", s)
                else:
                    s = rng.uniform(0.2, 0.8)
                    task, check = (t_sleep, key, s), ("sleep", s)
                self.expected[key] = check
                self.kinds[check[0]] += 1
                tasks.append(task)
                keys.append(key)
        return tasks, keys

    def record(self, key: int, value: Any) -> None:
        with self.lock:
            if not 0 <= key < len(self.seen):
                self.unknown += 1
                return
            self.seen[key] = min(255, self.seen[key] + 1)
            if self.seen[key] > 1:
                return  # a duplicate: counted at the end
            check = self.expected.pop(key)
            cls = self._classify(key, check, value)
            self.classes[cls] += 1
            if isinstance(value, TaskError):
                self.error_phases[f"{value.phase} ({value.exc_type})"] += 1
            if cls == "wrong" and len(self.wrong) < 10:
                self.wrong.append(f"task {key} {check[0]}: {value!r}"[:300])

    @staticmethod
    def _classify(key: int, check: tuple, value: Any) -> str:
        if isinstance(value, TaskError):
            if value.phase == "worker died":
                return "killed"
            if value.phase == "initializer" and value.exc_type == "WorkerDied":
                return "killed in the initializer"
            if (check[0] == "raise" and value.phase == "task"
                    and value.exc_type == "ValueError" and f"task {key}" in str(value)):
                return "raised as planned"
            return "wrong"
        if not isinstance(value, tuple) or not value or value[0] != key:
            return "wrong"
        kind = check[0]
        if kind == "small":
            ok = value[1] == check[1] and (check[2] is None or value[2] == check[2])
        elif kind == "array":
            back = value[1]
            if check[2]:
                ok = isinstance(back, np.ndarray) and int(back.sum()) == check[1]
            else:
                ok = back * 2 == check[1]
        elif kind == "sleep":
            ok = value[1] == check[1]
        else:
            ok = False
        return "result" if ok else "wrong"


# ---------------------------------------------------------------- drivers

class Run:
    def __init__(self, args, pool: Pool, ledger: Ledger) -> None:
        self.args = args
        self.pool = pool
        self.ledger = ledger
        self.stop_work = threading.Event()
        self.stop_kills = threading.Event()
        self.aborted = threading.Event()   # a driver failed: no further phase
        self.kills = 0
        self.kill_misses = 0          # the chosen worker was already gone
        self.pids_seen: set = set()
        self.requestors_done = collections.Counter()
        self.failures: List[str] = []  # a driver that raised

    def sprint_driver(self, seed: int) -> None:
        rng = random.Random(seed)
        n = 0
        while not self.stop_work.is_set():
            n += 1
            tag = f"s{seed}-{n}" if rng.random() < 0.5 else None
            sprint = Sprint(init_data=(soak_init, tag) if tag else None)
            self.pool.submit_sprint(sprint)
            chunks = rng.randint(1, 4)
            keys: List[int] = []
            tasks, ks = self.ledger.make_tasks(rng, rng.randint(50, 400) // chunks + 1, tag)
            sprint.submit_tasks(tasks)
            keys += ks
            chunks -= 1
            got = 0
            for task_id, value in sprint.yield_results(return_exceptions=True,
                                                       timeout=RESULT_WAIT_S):
                got += 1
                if 0 <= task_id < len(keys):
                    self.ledger.record(keys[task_id], value)
                else:
                    with self.ledger.lock:
                        self.ledger.unknown += 1
                # More tasks while reading: they are yielded by this loop too.
                if chunks and got >= len(keys) // 2:
                    tasks, ks = self.ledger.make_tasks(
                        rng, rng.randint(50, 400) // (chunks + 1) + 1, tag)
                    sprint.submit_tasks(tasks)
                    keys += ks
                    chunks -= 1
            self.ledger.finished(sprint)
            self.requestors_done["sprint"] += 1

    def batch_driver(self, seed: int) -> None:
        rng = random.Random(seed)
        n = 0
        while not self.stop_work.is_set():
            n += 1
            tag = f"b{seed}-{n}" if rng.random() < 0.5 else None
            tasks, keys = self.ledger.make_tasks(rng, rng.randint(50, 400), tag)
            batch = BatchManager(self.pool, tasks,
                                 init_data=(soak_init, tag) if tag else None).batch
            batch.start()
            results = batch.list_results(return_exceptions=True, timeout=RESULT_WAIT_S)
            if len(results) != len(keys):
                self.failures.append(f"batch of {len(keys)} tasks gave {len(results)} results")
            for key, value in zip(keys, results):
                self.ledger.record(key, value)
            del results
            self.ledger.finished(batch)
            self.requestors_done["batch"] += 1

    def killer(self, seed: int) -> None:
        rng = random.Random(seed)
        first_seen: Dict[int, float] = {}
        run_dir = _runtime.run_dir()
        while True:
            wait = rng.uniform(0.5, 1.5) * self.args.kill_every
            end = time.monotonic() + wait
            while time.monotonic() < end:
                if self.stop_kills.wait(0.1):
                    return
                now = time.monotonic()
                for pid in self.pool.pids:
                    self.pids_seen.add(pid)
                    if os.path.exists(_runtime.socket_path(pid, run_dir)):
                        first_seen.setdefault(pid, now)
            now = time.monotonic()
            ready = [pid for pid in self.pool.pids
                     if now - first_seen.get(pid, now) >= 0.5]
            if not ready:
                continue
            pid = rng.choice(ready)
            try:
                os.kill(pid, signal.SIGKILL)
                self.kills += 1
            except ProcessLookupError:
                self.kill_misses += 1
            first_seen.pop(pid, None)

    def guarded(self, fn, *args) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # reported as an accounting failure
            self.failures.append(f"{fn.__name__}: {type(exc).__name__}: {exc}"[:500])
            self.aborted.set()
            self.stop_work.set()

    def phase(self, seconds: float, rng: random.Random, report_every: float = 0.0) -> None:
        """Drivers (and the killer) for ``seconds``; then each driver ends
        its requestor and stops."""
        self.stop_work.clear()
        self.stop_kills.clear()
        threads = [threading.Thread(target=self.guarded, args=(fn, rng.randrange(1 << 30)),
                                    name=name)
                   for name, fn in (("sprint-1", self.sprint_driver),
                                    ("sprint-2", self.sprint_driver),
                                    ("batch", self.batch_driver))]
        if self.args.kill_every > 0:
            threads.append(threading.Thread(target=self.guarded,
                                            args=(self.killer, rng.randrange(1 << 30)),
                                            name="killer"))
        for t in threads:
            t.start()
        t0 = time.monotonic()
        deadline = t0 + seconds
        next_report = t0 + report_every if report_every else float("inf")
        while time.monotonic() < deadline and not self.stop_work.is_set():
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            if time.monotonic() >= next_report:
                next_report += report_every
                with self.ledger.lock:
                    done = sum(self.ledger.classes.values())
                print(f"  t={time.monotonic() - t0:5.0f} s  tasks {self.ledger.submitted:>9,}  "
                      f"outcomes {done:>9,}  kills {self.kills:>4}  "
                      f"client RSS {vmrss_kib() / 1024:6.1f} MiB", flush=True)
        self.stop_work.set()
        self.stop_kills.set()
        for t in threads:
            t.join(RESULT_WAIT_S + 30)
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            self.failures.append(f"threads still running: {stuck}")
            self.aborted.set()


# ---------------------------------------------------------------- sampling

def vmrss_kib(pid: Any = "self") -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def open_fds(memfds: bool = True) -> int:
    """Open fds of this process; memfds=False leaves out the memfds (lent
    memory kept for reuse, whose count follows the traffic)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue   # the one listing it
        count += memfds or not name.startswith("/memfd:")
    return count


def sample(pool: Pool) -> dict:
    gc.collect()
    # Memory swarm keeps for reuse on purpose, bounded (recvbuf.pyx, shm.pyx):
    # left out of the client's RSS check, shown in the report.
    cached_kib = (lent_stats()[2] + cached_bytes()) // 1024
    rss = vmrss_kib()
    workers = {pid: vmrss_kib(pid) for pid in pool.pids}
    workers = {pid: rss for pid, rss in workers.items() if rss is not None}
    return {"client_rss_kib": rss, "client_cached_kib": cached_kib,
            "client_rss_less_cached_kib": None if rss is None else rss - cached_kib,
            "worker_rss_kib": workers,
            "max_worker_rss_kib": max(workers.values()) if workers else None,
            "fds": open_fds(memfds=False), "workers": len(workers),
            "lent": lent_stats(), "recv_cache": cached_bytes()}


def settle(pool: Pool, size: int) -> bool:
    """Wait until the pool is back at its size, every worker listening."""
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        pids = pool.pids
        if len(pids) == size and all(os.path.exists(_runtime.socket_path(p)) for p in pids):
            return True
        time.sleep(0.1)
    return False


def checked_batch(pool: Pool, n: int) -> bool:
    """A batch of small tasks that must all succeed (no kills running)."""
    tasks = [(t_small, -(i + 1), i) for i in range(n)]
    results = BatchManager(pool, tasks).batch.list_results(timeout=RESULT_WAIT_S)
    return all(r[0] == -(i + 1) and r[1] == 2 * i for i, r in enumerate(results))


# ---------------------------------------------------------------- main

class _CountingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts = collections.Counter()
        self.first: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.levelname] += 1
        if len(self.first) < 5:
            self.first.append(f"{record.levelname}: {record.getMessage()}"[:200])


def configure(parser) -> None:
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="how long the drivers run (default 10; --quick: 0.5)")
    parser.add_argument("--workers", type=int, default=2, help="pool size (default 2)")
    parser.add_argument("--kill-every", type=float, default=3.0,
                        help="mean seconds between worker kills (default 3; 0: no kills)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds of the full mix before the start sample "
                             "(default: 10 %% of the run, 5 to 60 s)")
    parser.add_argument("--rss-slack-mib", type=float, default=32.0,
                        help="RSS growth always allowed, in MiB (default 32)")


def main() -> int:
    args = h.parse_args(__doc__.splitlines()[0], configure=configure)
    if args.quick:
        args.minutes = 0.5
    warmup_s = args.warmup if args.warmup is not None else min(60.0, max(5.0, args.minutes * 6))
    env = h.environment()
    watchdog = h.start_watchdog(args.minutes * 60 + warmup_s + 180, "soak")
    log_counter = _CountingHandler()
    swarm_log = logging.getLogger("swarm")
    swarm_log.addHandler(log_counter)
    swarm_log.propagate = False
    swarm_log.setLevel(logging.INFO)
    placement = h.Placement(args.pin)
    rng = random.Random(args.seed)
    ledger = Ledger()
    children_before = set(h.descendants(os.getpid()))
    fds_before_pool = open_fds()
    t_start = time.monotonic()

    placement.before_children()
    pool = Pool(workers=args.workers, max_retries=1)
    placement.after_children()
    run = Run(args, pool, ledger)
    try:
        # Warm-up, not measured: every worker loads this script and numpy,
        # then the full mix, kills included, brings the client and the
        # workers to their working size.
        warm, warm_keys = ledger.make_tasks(rng, 300, None)
        warm_batch = BatchManager(pool, warm).batch
        for key, value in zip(warm_keys, warm_batch.list_results(
                return_exceptions=True, timeout=RESULT_WAIT_S)):
            ledger.record(key, value)
        ledger.finished(warm_batch)
        del warm_batch, warm
        if not args.json:
            print(f"soak: {warmup_s:g} s warm-up, then {args.minutes:g} min; "
                  f"{args.workers} workers, kill every ~{args.kill_every:g} s, "
                  f"seed {args.seed}", flush=True)
        run.phase(warmup_s, rng)
        settle(pool, args.workers)
        start = sample(pool)
        t_work = time.monotonic()
        if not run.aborted.is_set():
            run.phase(args.minutes * 60, rng, report_every=0.0 if args.json else 30.0)
        t_end_work = time.monotonic()
        at_size = settle(pool, args.workers)
        pool_answers = checked_batch(pool, 200)
        settle(pool, args.workers)
        end = sample(pool)
        for pid in pool.pids:
            run.pids_seen.add(pid)
    finally:
        pool.close()
    fds_after_close = open_fds()
    time.sleep(0.2)
    children_left = sorted(set(h.descendants(os.getpid())) - children_before)
    run_dir = _runtime.run_dir()
    sockets_left = sorted(p for p in run.pids_seen
                          if os.path.exists(_runtime.socket_path(p, run_dir)))
    watchdog.set()

    # ------------------------------------------------------------ report
    submitted = ledger.submitted
    missing = [k for k, c in enumerate(ledger.seen) if c == 0]
    duplicated = [k for k, c in enumerate(ledger.seen) if c > 1]
    wrong = ledger.classes["wrong"]
    killed = ledger.classes["killed"]

    def rss_check(name: str, before: Optional[int], after: Optional[int]) -> h.Check:
        if before is None or after is None:
            return h.Check(name, False, f"not sampled (before {before}, after {after})")
        bound = before + max(before * 0.5, args.rss_slack_mib * 1024)
        return h.Check(name, after <= bound,
                       f"{before / 1024:.1f} -> {after / 1024:.1f} MiB "
                       f"(x{after / before:.2f}; bound {bound / 1024:.1f} MiB)")

    accounting = [
        h.Check("every task has an outcome", not missing,
                f"{submitted - len(missing):,} of {submitted:,}"
                + (f"; missing e.g. {missing[:5]}" if missing else "")),
        h.Check("no task has two outcomes", not duplicated,
                f"{len(duplicated)} duplicated" + (f", e.g. {duplicated[:5]}" if duplicated else "")),
        h.Check("no outcome for an unknown task", ledger.unknown == 0, f"{ledger.unknown}"),
        h.Check("every outcome is the expected one", wrong == 0,
                f"{wrong} wrong" + (f"; first: {ledger.wrong[0]}" if ledger.wrong else "")),
        # A task fails as "worker died" only after max_retries + 1 deaths of
        # a worker running it, and a death charges one task only.
        h.Check("worker-died errors need kills", killed <= run.kills // 2,
                f"{killed} tasks failed as 'worker died'; {run.kills} kills allow at most "
                f"{run.kills // 2}"),
        h.Check("requestor stats add up", not ledger.bad_stats,
                f"{ledger.requestors} requestors: done + failed == submitted, none left"
                + (f"; first bad: {ledger.bad_stats[0]}" if ledger.bad_stats else "")),
        h.Check("drivers ran without error", not run.failures,
                "; ".join(run.failures)[:300] or "sprints, batch and killer"),
        h.Check("pool answers after the run", pool_answers and at_size,
                f"back at {args.workers} workers: {at_size}; 200-task batch correct: "
                f"{pool_answers}"),
    ]
    resources = [
        rss_check("client RSS less swarm's caches", start["client_rss_less_cached_kib"],
                  end["client_rss_less_cached_kib"]),
        rss_check("max worker RSS", start["max_worker_rss_kib"], end["max_worker_rss_kib"]),
        h.Check("client fds stable", start["fds"] == end["fds"],
                f"{start['fds']} after warm-up -> {end['fds']} at the end"),
        h.Check("fds released by close", fds_after_close == fds_before_pool,
                f"{fds_before_pool} before Pool() -> {fds_after_close} after close()"),
        h.Check("no worker left", not children_left, f"{children_left or 'none'}"),
        h.Check("no socket file left", not sockets_left,
                f"{len(run.pids_seen)} workers seen; left: {sockets_left or 'none'}"),
    ]
    accounting_ok = all(c.passed for c in accounting)
    resources_ok = all(c.passed for c in resources)
    status = 0 if accounting_ok and resources_ok else (1 if not accounting_ok else 2)
    document = {
        "environment": env, "minutes": args.minutes, "workers": args.workers,
        "kill_every_s": args.kill_every, "seed": args.seed, "warmup_s": warmup_s,
        "work_s": t_end_work - t_work, "total_s": time.monotonic() - t_start,
        "tasks": submitted, "tasks_by_kind": dict(ledger.kinds),
        "outcomes": dict(ledger.classes), "error_phases": dict(ledger.error_phases),
        "kills": run.kills, "kill_misses": run.kill_misses, "workers_seen": len(run.pids_seen),
        "requestors": dict(run.requestors_done), "start": start, "end": end,
        "fds_before_pool": fds_before_pool, "fds_after_close": fds_after_close,
        "swarm_log": dict(log_counter.counts),
        "checks": [c.as_dict() for c in accounting + resources], "exit_status": status,
    }
    if args.json:
        h.emit_json(document)
        return status

    print()
    h.print_header("swarm soak run", env, notes=[
        f"run         {warmup_s:g} s warm-up, {args.minutes:g} min measured "
        f"({t_end_work - t_work:.1f} s), "
        f"{args.workers} workers, max_retries=1, kill every ~{args.kill_every:g} s, "
        f"seed {args.seed}"])
    rows = [
        ["tasks submitted", f"{submitted:,}"],
        ["  by kind", ", ".join(f"{k} {v:,}" for k, v in sorted(ledger.kinds.items()))],
        ["requestors", ", ".join(f"{k} {v}" for k, v in sorted(run.requestors_done.items()))
         + " (+ warm-up and final batch)"],
        ["results (as expected)", f"{ledger.classes['result']:,}"],
        ["raised as planned", f"{ledger.classes['raised as planned']:,}"],
        ["killed (worker died)", f"{killed:,}"],
        ["killed in initializer", f"{ledger.classes['killed in the initializer']:,}"],
        ["wrong outcomes", f"{wrong:,}"],
        ["errors by phase", ", ".join(f"{k}: {v:,}" for k, v in
                                      sorted(ledger.error_phases.items())) or "none"],
        ["kills sent", f"{run.kills} ({run.kill_misses} targets already gone); "
                       f"{len(run.pids_seen)} worker pids seen"],
        ["client RSS", f"{start['client_rss_kib'] / 1024:.1f} -> "
                       f"{end['client_rss_kib'] / 1024:.1f} MiB, of which swarm's caches "
                       f"(free lent memory, receive cache) "
                       f"{start['client_cached_kib'] / 1024:.1f} -> "
                       f"{end['client_cached_kib'] / 1024:.1f} MiB"],
        ["max worker RSS", f"{(start['max_worker_rss_kib'] or 0) / 1024:.1f} -> "
                           f"{(end['max_worker_rss_kib'] or 0) / 1024:.1f} MiB"],
        ["client fds", f"{fds_before_pool} before Pool, {start['fds']} after warm-up, "
                       f"{end['fds']} at the end, {fds_after_close} after close"],
        ["swarm log records", ", ".join(f"{k} {v}" for k, v in log_counter.counts.items())
         or "none"],
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    for line in log_counter.first:
        print(f"  log: {line}")
    print()
    for title, checks in (("Accounting (exit status 1 on failure)", accounting),
                          ("Resources (exit status 2 on failure)", resources)):
        print(title)
        w = max(len(c.name) for c in checks)
        for c in checks:
            print(f"  [{'PASS' if c.passed else 'FAIL'}] {c.name.ljust(w)}  {c.detail}")
    print()
    print("PASS" if status == 0 else f"FAIL (exit status {status})")
    return status


if __name__ == "__main__":
    sys.exit(main())
