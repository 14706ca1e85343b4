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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peers as P  # noqa: E402
from _tasks import identity  # noqa: E402

DEFAULT_PLAN = dict(tasks=100, repeats=5, watchdog_s=900)
QUICK_PLAN = dict(tasks=8, repeats=2, watchdog_s=180)
WARMUP = 4                # tasks, untimed, per case, results checked
ORDER = P.ARRAY_ORDER
OVER_RAY = 1.5            # target: swarm throughput / Ray remote throughput


def build_cases(pools: dict, arrays: list, empty_arrays) -> dict:
    """name -> fn(n) returning the n echoed arrays in task order; mpire's
    default would join them into one array (a copy), so it is told not to."""
    return P.array_cases(pools, identity, arrays, empty_arrays,
                         concatenate_numpy_output=False)


def main(argv=None) -> int:
    run = P.Run("numpy_roundtrip", __doc__.splitlines()[0], argv, DEFAULT_PLAN, QUICK_PLAN)
    n = run.plan["tasks"]
    arrays = P.make_arrays()
    empty_arrays, empty_why = P.swarm_empty_copies(arrays)

    def check(name, k, results):
        results = list(results)
        if len(results) != k or not all(
                np.array_equal(r, a) for r, a in zip(results, P.pick(arrays, k))):
            raise AssertionError(f"{name}: echoed arrays differ (or not in task order)")

    stats = run.measure(lambda pools: build_cases(pools, arrays, empty_arrays),
                        P.array_ray_cases(identity, arrays), number=n, warmup=WARMUP,
                        check=check)
    skipped = {P.ARRAY_EMPTY: empty_why, **run.ray_skipped(P.ARRAY_RAY, P.ARRAY_RAY_PREPUT)}
    checks = P.array_checks(stats, "round trip", OVER_RAY)

    P.array_report(
        run, ORDER, skipped, checks, bytes_per_task=2 * P.ARRAY_BYTES,
        gbps_counts="both directions (2 x 8 MiB per task), 1 GB = 1e9 B",
        title="swarm: numpy arrays round trip (8 MiB in, 8 MiB back)",
        table_title=f"{n} tasks each echoing an 8 MiB float64 array   "
                    "[GB/s counts BOTH directions: 2 x 8 MiB per task; peer/swarm > 1: "
                    "swarm faster]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
