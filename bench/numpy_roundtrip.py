"""numpy arrays round trip: tasks that each carry an 8 MiB array and get it back.

What is measured, in one run, with the same number of worker processes for
every pool (``--workers N``, default 2):

Workload: 100 tasks per sample (8 with ``--quick``)
  Task i carries array ``A[i % 8]``, one of 8 C-contiguous float64 arrays
  of 8 MiB (1,048,576 elements), made before the pools start. The worker
  runs ``identity(a)`` (bench/_tasks.py) and returns the array unchanged;
  the results come back as a list of arrays in task order, each compared
  with its input (``numpy.array_equal``, after the clock stops). One sample
  is the wall time from the call until the result list is in the caller's
  hands. Throughput counts BOTH directions: 2 x 8 MiB (2 x 8,388,608 B) per
  task, over the median time; 1 GB = 1e9 B (as bench/socket_roundtrip.py
  does). Also: median (and min) milliseconds per task.

    swarm Batch          ``BatchManager(pool, [(identity, A[i % 8]) ...])``,
                         ``start()``, ``list_results()``
    swarm Batch (swarm.empty)
                         the same, the 8 arrays allocated with
                         ``swarm.empty(shape, dtype)`` (shared memory, sent
                         without a copy) and filled before timing; the way
                         back is whatever swarm does with the returned
                         array. A "skipped" row while swarm has no
                         ``swarm.empty``
    mp map cs=1          ``multiprocessing.Pool.map(identity, arrays,
                         chunksize=1)`` (pickled both ways through pipes)
    PPE map              ``ProcessPoolExecutor.map(identity, arrays)``
                         (chunksize=1), consumed with ``list``
    loky map             ``loky.ProcessPoolExecutor``: the same
    mpire map cs=1       ``WorkerPool.map(identity, arrays, chunk_size=1,
                         concatenate_numpy_output=False)`` (its default would
                         join the results into one array: a copy)
    Ray remote           ``ray.get([identity_remote.remote(a) for a in
                         arrays])``: each array is copied into Ray's object
                         store on the way in, the worker's return value is
                         copied into it on the way back, and ``ray.get``
                         hands back read-only arrays mapped from the store
                         (no copy into this process's own memory). The
                         done-when target compares with this row.
    Ray pre-put refs     the 8 arrays ``ray.put`` once before timing, the
                         tasks carry their refs (informational: the way in
                         is already in shared memory)

  "peer/swarm" is the peer's median time over swarm Batch's: > 1 means
  swarm is faster. Ray (optional: ``pip install ray``) shows as "skipped"
  when not installed.

Method
  Every pool is started and warmed up (4 tasks, results checked) before
  anything is timed. The pools stay alive for the whole run; when one runs,
  the others are idle. Samples are interleaved across cases (the order
  rotates from one repeat to the next); the gc is off while a sample is
  timed; 5 repeats (2 with ``--quick``). A sample holds its 100 result
  arrays (800 MiB) until it is checked and dropped. Start methods are each
  library's default (the header names them). Ray runs last, alone, after
  the other pools are closed (see bench/_peers.py), with
  ``ray.init(num_cpus=N)``.

The checks printed at the end are informational (the performance issue's
targets): the script exits 0 whether they pass or not. A watchdog
(``--watchdog``, seconds) dumps the stacks, kills this process's descendant
processes and exits 3 if a run hangs.

Usage: python bench/numpy_roundtrip.py [--workers N] [--quick] [--json] [--no-ray]
                                       [--pin {none,same,split}] [--watchdog S]
"""

from __future__ import annotations

import os
import sys

import numpy as np

from swarm.client import BatchManager

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as h  # noqa: E402
import _peers as P  # noqa: E402
from _tasks import identity  # noqa: E402

DEFAULT_PLAN = dict(tasks=100, repeats=5, watchdog_s=900)
QUICK_PLAN = dict(tasks=8, repeats=2, watchdog_s=180)
WARMUP = 4                # tasks, untimed, per case, results checked
BASE = "swarm Batch"
EMPTY = BASE + P.SWARM_EMPTY_ROW_SUFFIX
RAY = "Ray remote"
RAY_PREPUT = "Ray pre-put refs"
ORDER = (BASE, EMPTY, "mp map cs=1", "PPE map", "loky map", "mpire map cs=1", RAY,
         RAY_PREPUT)
OVER_RAY = 1.5            # target: swarm throughput / Ray remote throughput


def pick(arrays: list, n: int) -> list:
    return [arrays[i % len(arrays)] for i in range(n)]


def build_cases(pools: dict, arrays: list, empty_arrays) -> dict:
    """name -> fn(n) returning the n echoed arrays in task order."""
    pool = pools["swarm"]

    def swarm_batch_over(source):
        def run(n):
            batch = BatchManager(pool, [(identity, a) for a in pick(source, n)]).batch
            batch.start()
            return batch.list_results()
        return run

    mp_pool = pools["mp"]

    def mp_map(n):
        return mp_pool.map(identity, pick(arrays, n), chunksize=1)

    ppe = pools["PPE"]

    def ppe_map(n):
        return list(ppe.map(identity, pick(arrays, n)))

    cases = {BASE: swarm_batch_over(arrays),
             EMPTY: swarm_batch_over(empty_arrays) if empty_arrays is not None else None,
             "mp map cs=1": mp_map, "PPE map": ppe_map, "loky map": None,
             "mpire map cs=1": None}
    lex = pools.get("loky")
    if lex is not None:
        def loky_map(n):
            return list(lex.map(identity, pick(arrays, n)))
        cases["loky map"] = loky_map
    mwp = pools.get("mpire")
    if mwp is not None:
        def mpire_map(n):
            return mwp.map(identity, pick(arrays, n), chunk_size=1,
                           concatenate_numpy_output=False)
        cases["mpire map cs=1"] = mpire_map
    return cases


def build_ray_cases(arrays: list):
    def build(ray, _stack) -> dict:
        identity_remote = ray.remote(identity)
        refs = [ray.put(a) for a in arrays]

        def ray_remote(n):
            return ray.get([identity_remote.remote(a) for a in pick(arrays, n)])

        def ray_preput(n):
            return ray.get([identity_remote.remote(r) for r in pick(refs, n)])
        return {RAY: ray_remote, RAY_PREPUT: ray_preput}
    return build


def make_checks(stats: dict) -> list:
    checks = []
    for name in (BASE, EMPTY):
        label = f"{name}: 8 MiB round trip >= {OVER_RAY:g}x Ray's throughput"
        if name not in stats:
            checks.append(h.Check(label, None, f"{name} skipped"))
        elif RAY not in stats:
            checks.append(h.Check(label, None, "Ray skipped"))
        else:
            swarm, ray = stats[name].median, stats[RAY].median
            checks.append(h.Check(label, ray >= OVER_RAY * swarm,
                                  f"swarm/Ray throughput = {ray / swarm:.2f}x "
                                  f"(need {OVER_RAY:.2f}x)"))
    return checks


def main(argv=None) -> int:
    args = h.parse_args(__doc__.splitlines()[0], argv, configure=lambda p: P.configure(
        p, default_watchdog_s=DEFAULT_PLAN["watchdog_s"],
        quick_watchdog_s=QUICK_PLAN["watchdog_s"]))
    if args.workers < 1:
        raise SystemExit("--workers must be >= 1")
    plan = dict(QUICK_PLAN if args.quick else DEFAULT_PLAN)
    if args.watchdog is not None:
        plan["watchdog_s"] = args.watchdog
    env = h.environment()
    placement = h.Placement(args.pin)
    watchdog = h.start_watchdog(plan["watchdog_s"], "numpy_roundtrip")

    n = plan["tasks"]
    arrays = P.make_arrays()
    empty_arrays, empty_why = P.swarm_empty_copies(arrays)

    def check(name, k, results):
        results = list(results)
        if len(results) != k or not all(
                np.array_equal(r, a) for r, a in zip(results, pick(arrays, k))):
            raise AssertionError(f"{name}: echoed arrays differ (or not in task order)")

    stats, methods, leftover = P.pool_phase(
        placement, args.workers, ("swarm", "mp", "PPE", "loky", "mpire"),
        lambda pools: build_cases(pools, arrays, empty_arrays),
        repeats=plan["repeats"], number=n, warmup=WARMUP, check=check)
    ray_stats, ray_info = P.ray_phase(
        args, placement, args.workers, build_ray_cases(arrays),
        repeats=plan["repeats"], number=n, warmup=WARMUP, check=check)
    stats.update(ray_stats)
    watchdog.set()
    skipped = {EMPTY: empty_why, RAY: ray_info.get("skipped", ""),
               RAY_PREPUT: ray_info.get("skipped", "")}
    checks = make_checks(stats)
    task_bytes = 2 * P.ARRAY_BYTES

    if args.json:
        h.emit_json({
            "benchmark": "numpy_roundtrip", "environment": env,
            "plan": dict(plan, quick=args.quick, pin=args.pin, workers=args.workers),
            "placement": placement.describe(), "start_methods": methods,
            "versions": P.versions(), "ray": ray_info,
            "results": {
                "unit": "seconds per task", "tasks": n, "array_bytes": P.ARRAY_BYTES,
                "gbps_counts": "both directions (2 x 8 MiB per task), 1 GB = 1e9 B",
                "cases": P.cases_json(stats, ORDER, BASE, skipped, extra=lambda s: {
                    "gbps_median": P.gbps(task_bytes, s.median)})},
            "swarm_workers_left_running": leftover,
            "checks": [c.as_dict() for c in checks],
        })
        return 0

    h.print_header("swarm: numpy arrays round trip (8 MiB in, 8 MiB back)", env, notes=[
        *P.version_notes(),
        f"plan        {'--quick' if args.quick else 'default'}: {args.workers} workers per "
        f"pool; {n} tasks x 8 MiB per sample x {plan['repeats']} repeats, median over "
        f"repeats",
        f"start       {methods}",
        f"pin         {placement.describe()}",
        *P.ray_notes(ray_info),
    ])
    h.print_table(
        f"{n} tasks each echoing an 8 MiB float64 array   "
        "[GB/s counts BOTH directions: 2 x 8 MiB per task; peer/swarm > 1: swarm faster]",
        ("case", "GB/s", "median ms/task", "min ms/task", "peer/swarm"),
        P.case_rows(stats, ORDER, BASE, lambda s: (
            f"{P.gbps(task_bytes, s.median):.2f}", f"{s.median * 1e3:.2f}",
            f"{s.min * 1e3:.2f}")))
    P.print_skip_notes(stats, ORDER, skipped)
    if leftover:
        print(f"WARNING: swarm workers still running after pool.close(): {leftover}\n")
    h.print_checks(checks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
