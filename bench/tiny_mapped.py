"""Tiny tasks mapped in order: a whole list of no-ops, results in task order.

What is measured, in one run, with the same number of worker processes for
every pool (``--workers N``, default 2):

Workload: no-op tasks, 20,000 per sample (4,000 with ``--quick``)
  The tasks are all known up front and the results come back as one list
  in task order (a "map"); each pool may group tasks into chunks, and the
  ones that chunk automatically do. Each task is a module-level function
  from bench/_tasks.py that returns None: ``(noop,)`` for swarm's built-in
  worker, ``noop_with_arg(i)`` for the map-style peers. One sample is the
  wall time from the call until the result list is in the caller's hands,
  divided by the number of tasks; reported as median (and min) microseconds
  per task.

    swarm Batch          a new ``BatchManager(pool, [(noop,)] * N).batch`` per
                         sample: ``start()`` then ``list_results()``
                         (whatever chunking the current swarm does)
    mp map               ``multiprocessing.Pool.map(noop_with_arg, range(N))``,
                         automatic chunking (ceil(N / (4 * workers)) per chunk)
    mpire map            ``mpire.WorkerPool(keep_alive=True).map(noop_with_arg,
                         range(N))``, automatic chunking (N / (4 * workers))
    PPE map cs=mp        ``concurrent.futures.ProcessPoolExecutor.map(
                         noop_with_arg, range(N), chunksize=C)``, consumed with
                         ``list``: concurrent.futures has no automatic
                         chunking (its default is 1, see tiny_streamed.py),
                         so C is multiprocessing's rule, ceil(N / (4 *
                         workers)), passed by hand
    loky map cs=mp       ``loky.ProcessPoolExecutor``, the same with the same C
    Ray Pool.map         ``ray.util.multiprocessing.Pool(processes=workers)
                         .map(noop_with_arg, range(N))``, its automatic
                         chunking (ceil(N / (4 * workers))); the Ray pool (its
                         actors) is created before timing. Optional:
                         ``pip install ray``; a "skipped" row otherwise.

  "peer/swarm" is the peer's median time per task over swarm Batch's: > 1
  means swarm is faster.

Method
  Every pool is started and warmed up (200 no-ops, results checked) before
  anything is timed. The pools stay alive for the whole run; when one runs,
  the others are idle. Samples are interleaved across cases (the order
  rotates from one repeat to the next); the gc is off while a sample is
  timed; 5 repeats (2 with ``--quick``). Start methods are each library's
  default (the header names them). Ray runs last, alone, after the other
  pools are closed (see bench/_peers.py), with ``ray.init(num_cpus=N)``.

The checks printed at the end are informational (the performance issue's
targets): the script exits 0 whether they pass or not. A watchdog
(``--watchdog``, seconds) dumps the stacks, kills this process's descendant
processes and exits 3 if a run hangs.

Usage: python bench/tiny_mapped.py [--workers N] [--quick] [--json] [--no-ray]
                                   [--pin {none,same,split}] [--watchdog S]
"""

from __future__ import annotations

import math
import os
import sys

from swarm.client import BatchManager

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as h  # noqa: E402
import _peers as P  # noqa: E402
from _tasks import noop, noop_with_arg  # noqa: E402

DEFAULT_PLAN = dict(tasks=20_000, repeats=5, watchdog_s=600)
QUICK_PLAN = dict(tasks=4_000, repeats=2, watchdog_s=180)
WARMUP = 200              # tasks, untimed, per case, results checked
BASE = "swarm Batch"
RAY = "Ray Pool.map"
ORDER = (BASE, "mp map", "mpire map", "PPE map cs=mp", "loky map cs=mp", RAY)
BATCH_OVER_MAP = 1.5      # target: Batch time / mp map time at most this


def mp_chunksize(n: int, workers: int) -> int:
    """multiprocessing.Pool.map's automatic chunksize for n tasks."""
    return max(1, math.ceil(n / (4 * workers)))


def build_cases(pools: dict, workers: int) -> dict:
    """name -> fn(n) returning the results in order (None: not installed)."""
    pool = pools["swarm"]
    task = (noop,)

    def swarm_batch(n):
        batch = BatchManager(pool, [task] * n).batch
        batch.start()
        return batch.list_results()

    mp_pool = pools["mp"]

    def mp_map(n):
        return mp_pool.map(noop_with_arg, range(n))

    def mpire_map(mwp):
        return lambda n: mwp.map(noop_with_arg, range(n))

    def executor_map(ex):
        return lambda n: list(ex.map(noop_with_arg, range(n),
                                     chunksize=mp_chunksize(n, workers)))

    return {BASE: swarm_batch, "mp map": mp_map,
            "mpire map": mpire_map(pools["mpire"]) if "mpire" in pools else None,
            "PPE map cs=mp": executor_map(pools["PPE"]),
            "loky map cs=mp": executor_map(pools["loky"]) if "loky" in pools else None}


def build_ray_cases(workers: int):
    def build(ray, stack) -> dict:
        from ray.util.multiprocessing import Pool as RayPool
        ray_pool = RayPool(processes=workers)
        stack.callback(ray_pool.terminate)

        def ray_map(n):
            return ray_pool.map(noop_with_arg, range(n))
        return {RAY: ray_map}
    return build


def check(name: str, n: int, results) -> None:
    if len(results) != n or any(r is not None for r in results):
        raise AssertionError(f"{name}: wrong results for {n} no-op tasks")


def make_checks(stats: dict) -> list:
    batch = stats[BASE].median
    mp_map = stats["mp map"].median
    return [h.Check(f"Batch of tiny tasks within {BATCH_OVER_MAP:g}x of mp.Pool.map per task",
                    batch <= BATCH_OVER_MAP * mp_map,
                    f"Batch {batch * 1e6:.2f} us vs mp map {mp_map * 1e6:.2f} us "
                    f"(Batch/map = {batch / mp_map:.2f}x, limit {BATCH_OVER_MAP:.2f}x)")]


def main(argv=None) -> int:
    run = P.Run("tiny_mapped", __doc__.splitlines()[0], argv, DEFAULT_PLAN, QUICK_PLAN)
    n, workers = run.plan["tasks"], run.args.workers
    stats = run.measure(lambda pools: build_cases(pools, workers), build_ray_cases(workers),
                        number=n, warmup=WARMUP, check=check)
    skipped = run.ray_skipped(RAY)
    checks = make_checks(stats)

    if run.args.json:
        run.emit_json({"unit": "seconds per task", "tasks": n,
                       "mp_chunksize": mp_chunksize(n, workers),
                       "cases": P.cases_json(stats, ORDER, BASE, skipped)}, checks)
        return 0

    run.print_header("swarm: tiny tasks, ordered map",
                     f"{n} no-op tasks per sample x {run.plan['repeats']} repeats, median "
                     f"over repeats; cs=mp: chunksize {mp_chunksize(n, workers)} passed by "
                     f"hand")
    run.print_report(
        f"{n} no-op tasks, results in order, microseconds per task   "
        "[peer/swarm > 1: swarm faster]",
        ("case", "median us/task", "min us/task", "tasks/s", "peer/swarm"), ORDER, BASE,
        lambda s: (f"{s.median * 1e6:.2f}", f"{s.min * 1e6:.2f}", f"{1 / s.median:,.0f}"),
        skipped, checks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
