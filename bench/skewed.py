"""Skewed task durations: how well each pool balances uneven work (makespan).

What is measured, in one run, with the same number of worker processes for
every pool (``--workers N``, default 2):

Workload: 400 sleep tasks of skewed durations (120 with ``--quick``)
  Task i sleeps ``d[i]`` seconds (``time.sleep``, bench/_tasks.py
  ``sleep_for``) and returns ``d[i]``; the results must come back in task
  order (checked). ``d`` is a fixed sample:
  ``numpy.random.default_rng(0).lognormal(mean=log(5 ms) - 0.8**2 / 2,
  sigma=0.8, size=400)``, i.e. a lognormal whose expected value is 5 ms
  (the header prints the sample's mean, max and sum); ``--quick`` runs its
  first 120. One sample is the makespan: the wall time from submission
  until the last result is in the caller's hands. ``ideal = sum(d) /
  workers`` (perfect balance, zero overhead); "makespan/ideal" is the
  median makespan over ideal.

    swarm Batch          ``BatchManager(pool, [(sleep_for, x) for x in d])``,
                         ``start()``, ``list_results()``
    mp map cs=1          ``multiprocessing.Pool.map(sleep_for, d, chunksize=1)``
    mp map               the same with automatic chunking
    PPE map              ``ProcessPoolExecutor.map(sleep_for, d)`` (chunksize=1)
    loky map             ``loky.ProcessPoolExecutor.map(sleep_for, d)``
                         (chunksize=1)
    mpire map            ``WorkerPool.map(sleep_for, d)``, automatic chunking
    Ray remote-each      ``ray.get([sleep_remote.remote(x) for x in d])``
                         (results in task order). Optional: ``pip install
                         ray``; a "skipped" row otherwise.

  "peer/swarm" is the peer's median makespan over swarm Batch's: > 1 means
  swarm is faster.

Method
  Every pool is started and warmed up (the first 4 durations, results
  checked) before anything is timed. The pools stay alive for the whole
  run; when one runs, the others are idle. Samples are interleaved across
  cases (the order rotates from one repeat to the next); the gc is off
  while a sample is timed; 3 repeats (2 with ``--quick``). Start methods
  are each library's default (the header names them). Ray runs last,
  alone, after the other pools are closed (see bench/_peers.py), with
  ``ray.init(num_cpus=N)``.

The checks printed at the end are informational (the performance issue's
targets): the script exits 0 whether they pass or not. A watchdog
(``--watchdog``, seconds) dumps the stacks, kills this process's descendant
processes and exits 3 if a run hangs.

Usage: python bench/skewed.py [--workers N] [--quick] [--json] [--no-ray]
                              [--pin {none,same,split}] [--watchdog S]
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np

from swarm.client import BatchManager

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as h  # noqa: E402
import _peers as P  # noqa: E402
from _tasks import sleep_for  # noqa: E402

DEFAULT_PLAN = dict(tasks=400, repeats=3, watchdog_s=600)
QUICK_PLAN = dict(tasks=120, repeats=2, watchdog_s=180)
WARMUP = 4                # tasks: the first few durations, untimed, checked
SKEW_MEAN_S = 5e-3
SKEW_SIGMA = 0.8
SKEW_SEED = 0
BASE = "swarm Batch"
MP_CASES = ("mp map cs=1", "mp map")
RAY = "Ray remote-each"
ORDER = (BASE, *MP_CASES, "PPE map", "loky map", "mpire map", RAY)
OVER_MP = 1.02            # target: swarm makespan / best multiprocessing makespan
OVER_IDEAL = 1.10         # target: swarm makespan / ideal


def skewed_durations(n: int) -> list:
    rng = np.random.default_rng(SKEW_SEED)
    mu = math.log(SKEW_MEAN_S) - SKEW_SIGMA ** 2 / 2     # E[d] = SKEW_MEAN_S
    return [float(x) for x in rng.lognormal(mean=mu, sigma=SKEW_SIGMA, size=n)]


def build_cases(pools: dict, durations: list) -> dict:
    """name -> fn(n): run durations[:n], return the results in task order."""
    pool = pools["swarm"]
    swarm_tasks = [(sleep_for, d) for d in durations]

    def swarm_batch(n):
        batch = BatchManager(pool, swarm_tasks[:n]).batch
        batch.start()
        return batch.list_results()

    mp_pool = pools["mp"]

    def mp_map_1(n):
        return mp_pool.map(sleep_for, durations[:n], chunksize=1)

    def mp_map(n):
        return mp_pool.map(sleep_for, durations[:n])

    def executor_map(ex):
        return lambda n: list(ex.map(sleep_for, durations[:n]))

    def mpire_map(mwp):
        return lambda n: mwp.map(sleep_for, durations[:n])

    return {BASE: swarm_batch, "mp map cs=1": mp_map_1, "mp map": mp_map,
            "PPE map": executor_map(pools["PPE"]),
            "loky map": executor_map(pools["loky"]) if "loky" in pools else None,
            "mpire map": mpire_map(pools["mpire"]) if "mpire" in pools else None}


def build_ray_cases(durations: list):
    def build(ray, _stack) -> dict:
        sleep_remote = ray.remote(sleep_for)

        def ray_each(n):
            return ray.get([sleep_remote.remote(d) for d in durations[:n]])
        return {RAY: ray_each}
    return build


def make_checks(stats: dict, n: int, ideal: float) -> list:
    swarm = stats[BASE].median * n
    best_mp = min(MP_CASES, key=lambda name: stats[name].median)
    mp = stats[best_mp].median * n
    return [
        h.Check(f"skewed makespan within {OVER_MP:g}x of multiprocessing's",
                swarm <= OVER_MP * mp,
                f"swarm Batch {swarm:.3f} s vs {best_mp} (the faster mp) {mp:.3f} s "
                f"(swarm/mp = {swarm / mp:.3f}, limit {OVER_MP:.3f})"),
        h.Check(f"skewed makespan within {OVER_IDEAL:g}x of ideal", swarm <= OVER_IDEAL * ideal,
                f"swarm Batch makespan/ideal = {swarm / ideal:.3f} (limit {OVER_IDEAL:.3f})"),
    ]


def main(argv=None) -> int:
    run = P.Run("skewed", __doc__.splitlines()[0], argv, DEFAULT_PLAN, QUICK_PLAN)
    n, workers = run.plan["tasks"], run.args.workers
    durations = skewed_durations(DEFAULT_PLAN["tasks"])[:n]
    ideal = sum(durations) / workers

    def check(name, k, results):
        if list(results) != durations[:k]:
            raise AssertionError(f"{name}: results not in task order (or wrong)")

    stats = run.measure(lambda pools: build_cases(pools, durations),
                        build_ray_cases(durations), number=n, warmup=WARMUP, check=check)
    skipped = run.ray_skipped(RAY)
    checks = make_checks(stats, n, ideal)

    if run.args.json:
        run.emit_json({
            "unit": "seconds per task (x tasks = makespan)", "tasks": n,
            "ideal_s": ideal, "sum_durations_s": sum(durations),
            "cases": P.cases_json(stats, ORDER, BASE, skipped, extra=lambda s: {
                "makespan_median_s": s.median * n,
                "makespan_over_ideal": s.median * n / ideal})}, checks)
        return 0

    durations_note = (
        f"durations   lognormal seed {SKEW_SEED}, sigma {SKEW_SIGMA}, E = "
        f"{SKEW_MEAN_S * 1e3:g} ms: sample mean {np.mean(durations) * 1e3:.2f} ms, "
        f"max {max(durations) * 1e3:.1f} ms, sum {sum(durations):.3f} s; "
        f"ideal = sum / {workers} = {ideal:.3f} s")
    run.print_header("swarm: skewed task durations",
                     f"{n} skewed tasks per sample x {run.plan['repeats']} repeats, median "
                     f"over repeats", notes=[durations_note])
    run.print_report(
        f"{n} skewed sleep tasks, ordered results   [ideal {ideal:.3f} s; "
        "peer/swarm > 1: swarm faster]",
        ("case", "median makespan s", "min s", "makespan/ideal", "peer/swarm"), ORDER, BASE,
        lambda s: (f"{s.median * n:.3f}", f"{s.min * n:.3f}", f"{s.median * n / ideal:.3f}"),
        skipped, checks)
    return 0

if __name__ == "__main__":
    sys.exit(main())
