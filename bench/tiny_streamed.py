"""Tiny tasks streamed one per submission: the per-task cost of each pool.

What is measured, in one run, with the same number of worker processes for
every pool (``--workers N``, default 2):

Workload: no-op tasks, 20,000 per sample (4,000 with ``--quick``)
  Each task is a module-level function from bench/_tasks.py that returns
  None: ``noop()`` for swarm and the submit-each peers (a built-in-worker
  task is ``(noop,)``), ``noop_with_arg(i)`` for the map-style peers.
  Nothing else happens in the worker, so the time is the pool's own cost:
  pickling, transport, dispatch, result delivery to the caller. Every task
  is its own submission; swarm may still send tasks that queue up behind
  a busy worker together (automatic chunking), as a stream of real work
  would. One sample is the wall time
  from the first submission until every result is in the caller's hands,
  divided by the number of tasks; reported as median (and min)
  microseconds per task, and tasks per second from the median.

    swarm Sprint         one Sprint, reused by every sample:
                         ``sprint.submit_tasks([(noop,)])`` N times, then
                         ``for task_id, result in sprint.yield_results()``
                         (results in completion order)
    mp imap cs=1         ``multiprocessing.Pool.imap(noop_with_arg, range(N),
                         chunksize=1)``, consumed with ``list``
    PPE submit-each      ``concurrent.futures.ProcessPoolExecutor``: one
                         ``submit(noop)`` per task, then ``.result()`` of each
    PPE map cs=1         ``ProcessPoolExecutor.map(noop_with_arg, range(N))``
                         (its default chunksize, 1), consumed with ``list``
    loky submit-each     ``loky.ProcessPoolExecutor``: as PPE submit-each
    mpire imap cs=1      ``mpire.WorkerPool(keep_alive=True).imap(noop_with_arg,
                         range(N), chunk_size=1)``, consumed with ``list``
    Ray remote-each      ``ray.get([noop_remote.remote() for _ in range(M)])``
                         with ``noop_remote = ray.remote(noop)``; M = 2,000
                         (500 with ``--quick``): at ~1 ms per task on 2 CPUs,
                         20,000 would take minutes. Optional: ``pip install
                         ray``; a "skipped" row otherwise.

  "peer/swarm" is the peer's median time per task over swarm Sprint's:
  > 1 means swarm is faster.

Method
  Every pool is started and warmed up (200 no-ops, results checked) before
  anything is timed: start-up is in bench/startup.py, not here. The pools
  stay alive for the whole run; when one runs, the others are idle. Samples
  are interleaved across cases (the order rotates from one repeat to the
  next) so that noise on a busy machine hits every case alike; the gc is
  off while a sample is timed; 5 repeats (2 with ``--quick``). Start
  methods are each library's default (the header names them). Ray runs
  last, alone, after the other pools are closed (its daemons would tax the
  other cases; see bench/_peers.py), with ``ray.init(num_cpus=N)``.

The checks printed at the end are informational (the performance issue's
targets): the script exits 0 whether they pass or not. A watchdog
(``--watchdog``, seconds) dumps the stacks, kills this process's descendant
processes and exits 3 if a run hangs.

Usage: python bench/tiny_streamed.py [--workers N] [--quick] [--json] [--no-ray]
                                     [--pin {none,same,split}] [--watchdog S]
"""

from __future__ import annotations

import os
import sys

from swarm.client import Sprint

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as h  # noqa: E402
import _peers as P  # noqa: E402
from _tasks import noop, noop_with_arg  # noqa: E402

DEFAULT_PLAN = dict(tasks=20_000, ray_tasks=2_000, repeats=5, watchdog_s=900)
QUICK_PLAN = dict(tasks=4_000, ray_tasks=500, repeats=2, watchdog_s=180)
WARMUP = 200              # tasks, untimed, per case, results checked
BASE = "swarm Sprint"
RAY = "Ray remote-each"
ORDER = (BASE, "mp imap cs=1", "PPE submit-each", "PPE map cs=1", "loky submit-each",
         "mpire imap cs=1", RAY)
SPRINT_OVER_IMAP = 5.0    # target: imap cs=1 time / Sprint time


def build_cases(pools: dict) -> dict:
    """name -> fn(n) returning the results (None: peer not installed)."""
    pool = pools["swarm"]
    sprint = Sprint()
    pool.submit_sprint(sprint)
    task = (noop,)

    def swarm_sprint(n):
        submit = sprint.submit_tasks
        one = [task]
        for _ in range(n):
            submit(one)
        return [r for r in sprint.yield_results()]

    mp_pool = pools["mp"]

    def mp_imap(n):
        return list(mp_pool.imap(noop_with_arg, range(n), chunksize=1))

    ppe = pools["PPE"]

    def submit_each(ex):
        def run(n):
            futures = [ex.submit(noop) for _ in range(n)]
            return [f.result() for f in futures]
        return run

    def ppe_map(n):
        return list(ppe.map(noop_with_arg, range(n)))

    def mpire_imap(mwp):
        return lambda n: list(mwp.imap(noop_with_arg, range(n), chunk_size=1))

    return {BASE: swarm_sprint, "mp imap cs=1": mp_imap, "PPE submit-each": submit_each(ppe),
            "PPE map cs=1": ppe_map,
            "loky submit-each": submit_each(pools["loky"]) if "loky" in pools else None,
            "mpire imap cs=1": mpire_imap(pools["mpire"]) if "mpire" in pools else None}


def build_ray_cases(ray, _stack) -> dict:
    noop_remote = ray.remote(noop)

    def ray_each(n):
        return ray.get([noop_remote.remote() for _ in range(n)])
    return {RAY: ray_each}


def check(name: str, n: int, results) -> None:
    if name == BASE:
        ids = sorted(i for i, _ in results)
        ok = len(ids) == n and ids == list(range(ids[0], ids[0] + n)) \
            and all(r is None for _, r in results)
    else:
        ok = len(results) == n and all(r is None for r in results)
    if not ok:
        raise AssertionError(f"{name}: wrong results for {n} no-op tasks")


def make_checks(stats: dict) -> list:
    sprint = stats[BASE].median
    imap = stats["mp imap cs=1"].median
    return [h.Check(f"Sprint >= {SPRINT_OVER_IMAP:g}x faster per task than mp imap(chunksize=1)",
                    imap >= SPRINT_OVER_IMAP * sprint,
                    f"Sprint {sprint * 1e6:.1f} us vs imap {imap * 1e6:.1f} us "
                    f"(imap/Sprint = {imap / sprint:.2f}x, need {SPRINT_OVER_IMAP:.2f}x)")]


def main(argv=None) -> int:
    run = P.Run("tiny_streamed", __doc__.splitlines()[0], argv, DEFAULT_PLAN, QUICK_PLAN)
    n = run.plan["tasks"]
    stats = run.measure(build_cases, build_ray_cases, number=n, warmup=WARMUP, check=check,
                        ray_number=run.plan["ray_tasks"])
    skipped = run.ray_skipped(RAY)
    checks = make_checks(stats)

    if run.args.json:
        run.emit_json({"unit": "seconds per task", "tasks": n,
                       "cases": P.cases_json(stats, ORDER, BASE, skipped)}, checks)
        return 0

    run.print_header("swarm: tiny tasks, streamed one per submission",
                     f"{n} no-op tasks per sample x {run.plan['repeats']} repeats, median "
                     f"over repeats")
    run.print_report(
        f"{n} no-op tasks, one message each, microseconds per task   "
        "[peer/swarm > 1: swarm faster]",
        ("case", "median us/task", "min us/task", "tasks/s", "peer/swarm"), ORDER, BASE,
        lambda s: (f"{s.median * 1e6:.1f}", f"{s.min * 1e6:.1f}", f"{1 / s.median:,.0f}"),
        skipped, checks)
    return 0

if __name__ == "__main__":
    sys.exit(main())
