"""numpy arrays in: tasks that each carry an 8 MiB array and return a float.

What is measured, in one run, with the same number of worker processes for
every pool (``--workers N``, default 2):

Workload: 200 tasks per sample (16 with ``--quick``)
  Task i carries array ``A[i % 8]``, one of 8 C-contiguous float64 arrays
  of 8 MiB (1,048,576 elements; whole numbers 0..255, so sums are exact),
  made before the pools start. The worker runs ``checksum(a)`` (bench/
  _tasks.py: ``float(a.sum())``, reads every element) and returns the
  float; the results come back as a list in task order and are checked
  against the sums computed here. One sample is the wall time from the
  call until the result list is in the caller's hands. Throughput counts
  the bytes moved in, one direction: 200 x 8 MiB (8,388,608 B) per sample,
  over the median time; 1 GB = 1e9 B. The results (a float each) are not
  counted. Also: median (and min) milliseconds per task.

    swarm Batch          ``BatchManager(pool, [(checksum, A[i % 8]) ...])``,
                         ``start()``, ``list_results()``
    swarm Batch (swarm.empty)
                         the same, the 8 arrays allocated with
                         ``swarm.empty(shape, dtype)`` (shared memory, sent
                         without a copy) and filled before timing; a
                         "skipped" row while swarm has no ``swarm.empty``
    mp map cs=1          ``multiprocessing.Pool.map(checksum, arrays,
                         chunksize=1)`` (each array pickled into the pipe)
    PPE map              ``ProcessPoolExecutor.map(checksum, arrays)``
                         (chunksize=1), consumed with ``list``
    loky map             ``loky.ProcessPoolExecutor``: the same
    mpire map cs=1       ``WorkerPool.map(checksum, arrays, chunk_size=1)``
    Ray remote           ``ray.get([checksum_remote.remote(a) for a in
                         arrays])``: Ray copies each array into its object
                         store (``ray.put`` implied) and the worker reads it
                         there without a copy. The done-when target compares
                         with this row.
    Ray pre-put refs     the 8 arrays ``ray.put`` once before timing, the
                         tasks carry their refs: data already in shared
                         memory, Ray's counterpart of the swarm.empty row
                         (informational)
    in-process           reference, not a pool: ``checksum(a)`` on every
                         task's array in this process, serially: what the
                         work itself costs on one CPU, no transport

  "peer/swarm" is the peer's median time over swarm Batch's: > 1 means
  swarm is faster. Ray (optional: ``pip install ray``) shows as "skipped"
  when not installed.

Method
  Every pool is started and warmed up (4 tasks, results checked) before
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

Usage: python bench/numpy_in.py [--workers N] [--quick] [--json] [--no-ray]
                                [--pin {none,same,split}] [--watchdog S]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peers as P  # noqa: E402
from _tasks import checksum  # noqa: E402

DEFAULT_PLAN = dict(tasks=200, repeats=5, watchdog_s=900)
QUICK_PLAN = dict(tasks=16, repeats=2, watchdog_s=180)
WARMUP = 4                # tasks, untimed, per case, results checked
LOCAL = "in-process"
ORDER = (*P.ARRAY_ORDER, LOCAL)
OVER_RAY = 2.0            # target: swarm throughput / Ray remote throughput


def build_cases(pools: dict, arrays: list, empty_arrays) -> dict:
    """name -> fn(n) returning the n checksums in task order."""
    def local(n):
        return [checksum(a) for a in P.pick(arrays, n)]
    return {**P.array_cases(pools, checksum, arrays, empty_arrays), LOCAL: local}


def main(argv=None) -> int:
    run = P.Run("numpy_in", __doc__.splitlines()[0], argv, DEFAULT_PLAN, QUICK_PLAN)
    n = run.plan["tasks"]
    arrays = P.make_arrays()
    sums = [checksum(a) for a in arrays]
    empty_arrays, empty_why = P.swarm_empty_copies(arrays)

    def check(name, k, results):
        if list(results) != P.pick(sums, k):
            raise AssertionError(f"{name}: wrong checksums (or not in task order)")

    stats = run.measure(lambda pools: build_cases(pools, arrays, empty_arrays),
                        P.array_ray_cases(checksum, arrays), number=n, warmup=WARMUP,
                        check=check)
    skipped = {P.ARRAY_EMPTY: empty_why, **run.ray_skipped(P.ARRAY_RAY, P.ARRAY_RAY_PREPUT)}
    checks = P.array_checks(stats, "arrays in", OVER_RAY)

    P.array_report(
        run, ORDER, skipped, checks, bytes_per_task=P.ARRAY_BYTES,
        gbps_counts="bytes in only (one 8 MiB array per task), 1 GB = 1e9 B",
        title="swarm: numpy arrays in (8 MiB per task, small result)",
        table_title=f"{n} tasks each carrying an 8 MiB float64 array, checksum back   "
                    "[GB/s counts bytes IN only: 8 MiB per task; peer/swarm > 1: swarm faster]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
