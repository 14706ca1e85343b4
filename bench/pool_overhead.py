"""Per-task overhead and load balance of swarm's Pool against other process pools.

What is measured, in one run, with the same number of worker processes for
every pool (``--workers N``, default 2):

Workload A: no-op tasks (20,000 per sample; 4,000 with ``--quick``)
  Each task is a module-level function from bench/_tasks.py that returns
  None: ``noop()`` for swarm (a built-in-worker task is ``(noop,)``),
  ``noop_with_arg(i)`` for the map-style peers. Nothing else happens in the
  worker, so the time is the pool's own cost: pickling, transport, dispatch,
  result delivery to the caller. One sample is the wall time from the first
  submission until every result is in the caller's hands, divided by the
  number of tasks; reported as median (and min) microseconds per task.

    swarm Sprint         one Sprint, reused by every sample:
                         ``sprint.submit_tasks([(noop,)] * N)`` then
                         ``for task_id, result in sprint.yield_results()``
                         (results in completion order; no chunking: every task
                         is its own frame)
    swarm Batch          a new ``BatchManager(pool, [(noop,)] * N).batch`` per
                         sample (same pool as the Sprint): ``start()`` then
                         ``list_results()`` (task order)
    mp imap cs=1         ``multiprocessing.Pool.imap(noop_with_arg, range(N),
                         chunksize=1)``, consumed with ``list``
    mp map               ``multiprocessing.Pool.map(noop_with_arg, range(N))``,
                         default chunking (ceil(N / (4 * workers)) per chunk)
    PPE submit-each      ``concurrent.futures.ProcessPoolExecutor``: one
                         ``submit(noop)`` per task, then ``.result()`` of each
    PPE map              ``ProcessPoolExecutor.map(noop_with_arg, range(N))``
                         (default chunksize=1), consumed with ``list``
    loky submit-each     ``loky.ProcessPoolExecutor``: as PPE submit-each
    mpire map            ``mpire.WorkerPool(n_jobs=workers, keep_alive=True)
                         .map(noop_with_arg, range(N))``, default chunking
                         (N / (4 * workers) per chunk)
    mpire imap cs=1      the same pool, ``imap(noop_with_arg, range(N),
                         chunk_size=1)``, consumed with ``list``

  The columns "peer/Sprint" and "peer/Batch" are the peer's median time per
  task over swarm's: > 1 means swarm is faster. Chunking peers (mp map,
  mpire map) send one message per chunk, not per task; they are in the table
  as the batched reference, not as like-for-like streaming.

Workload B: skewed durations (400 tasks; the first 200 with ``--quick``)
  Task i sleeps ``d[i]`` seconds (``time.sleep``) and returns ``d[i]``; the
  results must come back in task order (checked). ``d`` is a fixed sample:
  ``numpy.random.default_rng(0).lognormal(mean=log(5 ms) - 0.8**2 / 2,
  sigma=0.8, size=400)``, i.e. a lognormal whose expected value is 5 ms
  (the header prints the sample's mean, max and sum). One sample is the
  makespan: the wall time from submission until the last result is in the
  caller's hands. ``ideal = sum(d) / workers`` (perfect balance, zero
  overhead); "makespan/ideal" is the median makespan over ideal.

    swarm Batch          ``BatchManager(pool, [(sleep_for, x) for x in d])``,
                         ``start()``, ``list_results()``
    mp map cs=1          ``multiprocessing.Pool.map(sleep_for, d, chunksize=1)``
    mp map               the same with default chunking
    PPE map              ``ProcessPoolExecutor.map(sleep_for, d)`` (chunksize=1)
    loky map             ``loky.ProcessPoolExecutor.map(sleep_for, d)``
                         (chunksize=1)
    mpire map            ``WorkerPool.map(sleep_for, d)``, default chunking

Method
  Every pool is started, and warmed up (a few hundred no-ops and a few short
  sleeps, whose results are checked), before anything is timed: start-up is
  not in any sample. All pools stay alive for the whole run; when one runs,
  the others are idle. Samples are interleaved across the cases (the case
  order rotates from one repeat to the next) so that noise on a busy machine
  hits every case alike; the gc is off while a sample is timed. Workload A:
  5 repeats (2 with ``--quick``); workload B: 3 repeats (2 with ``--quick``).
  Start methods are each library's default on this platform (the header
  names them; on Linux before Python 3.14: fork for multiprocessing and
  ProcessPoolExecutor, loky's own spawn-like "loky" method, fork for mpire;
  swarm starts its workers with subprocess). mpire's ``keep_alive=True`` is
  the one non-default setting: without it every ``map`` call would start and
  stop its workers, which would put start-up in the timed region.
  A peer that is not installed shows as "skipped".

The checks printed at the end are informational: the script exits 0 whether
they pass or not. A watchdog (``--watchdog``, seconds) dumps the stacks,
kills this process's descendant processes and exits 3 if a run hangs.

Usage: python bench/pool_overhead.py [--workers N] [--quick] [--json]
                                     [--pin {none,same,split}] [--watchdog S]
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import multiprocessing
import os
import sys

import numpy as np

from swarm.client import BatchManager, Pool, Sprint

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as h  # noqa: E402
from _tasks import noop, noop_with_arg, sleep_for  # noqa: E402

DEFAULT_PLAN = dict(noop_tasks=20_000, noop_repeats=5, skew_tasks=400, skew_repeats=3,
                    watchdog_s=900)
QUICK_PLAN = dict(noop_tasks=4_000, noop_repeats=2, skew_tasks=200, skew_repeats=2,
                  watchdog_s=180)
WARMUP_NOOPS = 200        # untimed, per pool, results checked
WARMUP_SLEEPS = 4         # untimed, per pool, the first few durations
SKEW_MEAN_S = 5e-3
SKEW_SIGMA = 0.8
SKEW_SEED = 0

A_ORDER = ("swarm Sprint", "swarm Batch", "mp imap cs=1", "mp map", "PPE submit-each",
           "PPE map", "loky submit-each", "mpire map", "mpire imap cs=1")
B_ORDER = ("swarm Batch", "mp map cs=1", "mp map", "PPE map", "loky map", "mpire map")


def _pin_threads(cpus) -> None:
    """Give every thread of this process ``cpus`` (None: leave them).

    ``Placement.after_children`` pins the calling thread only; the pools'
    helper threads (swarm's I/O thread, multiprocessing's handler threads,
    the executors' manager threads) were started before it, inherited the
    children's CPUs, and must follow this process to its own CPU.
    """
    if cpus is None:
        return
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), cpus)


# ---------------------------------------------------------------- pools

def _optional(name: str):
    try:
        return __import__(name)
    except ImportError:
        return None


def start_pools(stack: contextlib.ExitStack, workers: int) -> dict:
    """Start every pool; their shutdown is registered on ``stack``."""
    pools = {}

    pool = Pool(workers=workers)
    stack.callback(pool.close)
    pools["swarm"] = pool

    mp_pool = multiprocessing.Pool(workers)

    def stop_mp():
        mp_pool.close()
        mp_pool.join()
    stack.callback(stop_mp)
    pools["mp"] = mp_pool

    ppe = concurrent.futures.ProcessPoolExecutor(max_workers=workers)
    stack.callback(ppe.shutdown, wait=True)
    pools["PPE"] = ppe

    loky = _optional("loky")
    if loky is not None:
        lex = loky.ProcessPoolExecutor(max_workers=workers)
        stack.callback(lex.shutdown, wait=True)
        pools["loky"] = lex

    mpire = _optional("mpire")
    if mpire is not None:
        mwp = mpire.WorkerPool(n_jobs=workers, keep_alive=True)

        def stop_mpire():
            try:
                mwp.stop_and_join()
            finally:
                mwp.terminate()
        stack.callback(stop_mpire)
        pools["mpire"] = mwp
    return pools


def start_methods(pools: dict) -> str:
    parts = ["swarm: subprocess",
             f"mp: {multiprocessing.get_start_method()}",
             "PPE: " + (pools["PPE"]._mp_context.get_start_method()
                        if hasattr(pools["PPE"], "_mp_context") else "default")]
    if "loky" in pools:
        parts.append("loky: loky")
    if "mpire" in pools:
        parts.append(f"mpire: {pools['mpire'].pool_params.start_method}")
    return ", ".join(parts)


# ---------------------------------------------------------------- workload A

def noop_cases(pools: dict) -> dict:
    """name -> fn(n) returning the results (None: peer not installed)."""
    pool = pools["swarm"]
    sprint = Sprint()
    pool.submit_sprint(sprint)
    task = (noop,)

    def swarm_sprint(n):
        sprint.submit_tasks([task] * n)
        return [r for r in sprint.yield_results()]

    def swarm_batch(n):
        batch = BatchManager(pool, [task] * n).batch
        batch.start()
        return batch.list_results()

    mp_pool = pools["mp"]

    def mp_imap(n):
        return list(mp_pool.imap(noop_with_arg, range(n), chunksize=1))

    def mp_map(n):
        return mp_pool.map(noop_with_arg, range(n))

    ppe = pools["PPE"]

    def ppe_submit(n):
        futures = [ppe.submit(noop) for _ in range(n)]
        return [f.result() for f in futures]

    def ppe_map(n):
        return list(ppe.map(noop_with_arg, range(n)))

    cases = {"swarm Sprint": swarm_sprint, "swarm Batch": swarm_batch,
             "mp imap cs=1": mp_imap, "mp map": mp_map,
             "PPE submit-each": ppe_submit, "PPE map": ppe_map,
             "loky submit-each": None, "mpire map": None, "mpire imap cs=1": None}

    lex = pools.get("loky")
    if lex is not None:
        def loky_submit(n):
            futures = [lex.submit(noop) for _ in range(n)]
            return [f.result() for f in futures]
        cases["loky submit-each"] = loky_submit

    mwp = pools.get("mpire")
    if mwp is not None:
        def mpire_map(n):
            return mwp.map(noop_with_arg, range(n))

        def mpire_imap(n):
            return list(mwp.imap(noop_with_arg, range(n), chunk_size=1))
        cases["mpire map"] = mpire_map
        cases["mpire imap cs=1"] = mpire_imap
    return cases


def check_noop(name: str, results, n: int) -> None:
    if name == "swarm Sprint":
        ids = sorted(i for i, _ in results)
        ok = len(ids) == n and ids == list(range(ids[0], ids[0] + n)) \
            and all(r is None for _, r in results)
    else:
        ok = len(results) == n and all(r is None for r in results)
    if not ok:
        raise AssertionError(f"{name}: wrong results for {n} no-op tasks")


# ---------------------------------------------------------------- workload B

def skewed_durations(n: int) -> list:
    rng = np.random.default_rng(SKEW_SEED)
    mu = math.log(SKEW_MEAN_S) - SKEW_SIGMA ** 2 / 2     # E[d] = SKEW_MEAN_S
    return [float(x) for x in rng.lognormal(mean=mu, sigma=SKEW_SIGMA, size=n)]


def skew_cases(pools: dict, durations: list) -> dict:
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

    ppe = pools["PPE"]

    def ppe_map(n):
        return list(ppe.map(sleep_for, durations[:n]))

    cases = {"swarm Batch": swarm_batch, "mp map cs=1": mp_map_1, "mp map": mp_map,
             "PPE map": ppe_map, "loky map": None, "mpire map": None}

    lex = pools.get("loky")
    if lex is not None:
        def loky_map(n):
            return list(lex.map(sleep_for, durations[:n]))
        cases["loky map"] = loky_map

    mwp = pools.get("mpire")
    if mwp is not None:
        def mpire_map(n):
            return mwp.map(sleep_for, durations[:n])
        cases["mpire map"] = mpire_map
    return cases


def check_skew(name: str, results, expected: list) -> None:
    if list(results) != expected:
        raise AssertionError(f"{name}: results not in task order (or wrong)")


# ---------------------------------------------------------------- report

def noop_rows(stats: dict) -> list:
    sprint = stats["swarm Sprint"].median
    batch = stats["swarm Batch"].median
    rows = []
    for name in A_ORDER:
        s = stats.get(name)
        if s is None:
            rows.append((name, "skipped", "-", "-", "-"))
            continue
        rows.append((name, f"{s.median * 1e6:.1f}", f"{s.min * 1e6:.1f}",
                     f"{h.ratio(s.median, sprint):.2f}", f"{h.ratio(s.median, batch):.2f}"))
    return rows


def skew_rows(stats: dict, n: int, ideal: float) -> list:
    base = stats["swarm Batch"].median * n
    rows = []
    for name in B_ORDER:
        s = stats.get(name)
        if s is None:
            rows.append((name, "skipped", "-", "-", "-"))
            continue
        med, lo = s.median * n, s.min * n
        rows.append((name, f"{med:.3f}", f"{lo:.3f}", f"{med / ideal:.3f}",
                     f"{h.ratio(med, base):.2f}"))
    return rows


def make_checks(noop_stats: dict, skew_stats: dict, n_skew: int, ideal: float) -> list:
    sprint = noop_stats["swarm Sprint"].median
    imap = noop_stats["mp imap cs=1"].median
    ppe = noop_stats["PPE submit-each"].median
    skew = skew_stats["swarm Batch"].median * n_skew / ideal
    return [
        h.Check("Sprint at least as fast per task as multiprocessing imap(chunksize=1)",
                sprint <= imap,
                f"Sprint {sprint * 1e6:.1f} us vs imap {imap * 1e6:.1f} us "
                f"(imap/Sprint = {imap / sprint:.2f}x)"),
        h.Check("Sprint >= 4x faster than ProcessPoolExecutor submit-each",
                ppe >= 4 * sprint,
                f"Sprint {sprint * 1e6:.1f} us vs PPE {ppe * 1e6:.1f} us "
                f"(PPE/Sprint = {ppe / sprint:.2f}x, need 4.00x)"),
        h.Check("skewed makespan within 1.10x of ideal", skew <= 1.10,
                f"swarm Batch makespan/ideal = {skew:.3f} (limit 1.100)"),
    ]


def stats_json(stats: dict, order, base_names) -> dict:
    out = {}
    for name in order:
        s = stats.get(name)
        if s is None:
            out[name] = {"skipped": "not installed"}
            continue
        d = s.as_dict()
        for base in base_names:
            d[f"ratio_over_{base.replace(' ', '_')}"] = h.ratio(s.median, stats[base].median)
        out[name] = d
    return out


def _configure(parser) -> None:
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes for every pool (default 2)")
    parser.add_argument("--watchdog", type=float, default=None,
                        help="seconds before a hung run is killed (0: never; default "
                             f"{DEFAULT_PLAN['watchdog_s']}, {QUICK_PLAN['watchdog_s']} "
                             "with --quick)")


def main(argv=None) -> int:
    args = h.parse_args(__doc__.splitlines()[0], argv, configure=_configure)
    if args.workers < 1:
        raise SystemExit("--workers must be >= 1")
    plan = dict(QUICK_PLAN if args.quick else DEFAULT_PLAN)
    if args.watchdog is not None:
        plan["watchdog_s"] = args.watchdog
    workers = args.workers
    env = h.environment()
    placement = h.Placement(args.pin)
    watchdog = h.start_watchdog(plan["watchdog_s"], "pool_overhead")

    n_noop, n_skew = plan["noop_tasks"], plan["skew_tasks"]
    durations = skewed_durations(n_skew)
    ideal = sum(durations) / workers

    with contextlib.ExitStack() as stack:
        placement.before_children()
        pools = start_pools(stack, workers)
        a_cases = noop_cases(pools)
        b_cases = skew_cases(pools, durations)
        # Warm-up: every worker of every pool started and used, results checked.
        for name, fn in a_cases.items():
            if fn is not None:
                check_noop(name, fn(WARMUP_NOOPS), WARMUP_NOOPS)
        for name, fn in b_cases.items():
            if fn is not None:
                check_skew(name, fn(WARMUP_SLEEPS), durations[:WARMUP_SLEEPS])
        placement.after_children()
        _pin_threads(placement.parent_cpus)
        methods = start_methods(pools)

        a_live = {name: fn for name, fn in a_cases.items() if fn is not None}
        noop_stats = h.measure(a_live, repeats=plan["noop_repeats"], number=n_noop,
                               warmup=WARMUP_NOOPS,
                               check=lambda name, n, value: check_noop(name, value, n))
        b_live = {name: fn for name, fn in b_cases.items() if fn is not None}
        skew_stats = h.measure(b_live, repeats=plan["skew_repeats"], number=n_skew,
                               warmup=WARMUP_SLEEPS,
                               check=lambda name, n, value: check_skew(name, value,
                                                                       durations[:n]))
        swarm_pids = pools["swarm"].pids
    watchdog.set()
    leftover = [p for p in swarm_pids if os.path.exists(f"/proc/{p}")]

    checks = make_checks(noop_stats, skew_stats, n_skew, ideal)

    if args.json:
        h.emit_json({
            "benchmark": "pool_overhead",
            "environment": env,
            "plan": dict(plan, quick=args.quick, pin=args.pin, workers=workers),
            "placement": placement.describe(),
            "start_methods": methods,
            "versions": {m: h.package_version(m) for m in ("loky", "mpire")},
            "results": {
                "noop": {"unit": "seconds per task", "tasks": n_noop,
                         "cases": stats_json(noop_stats, A_ORDER,
                                             ("swarm Sprint", "swarm Batch"))},
                "skewed": {"unit": "seconds per task (x tasks = makespan)",
                           "tasks": n_skew, "ideal_s": ideal,
                           "sum_durations_s": sum(durations),
                           "cases": {name: dict(v, makespan_median_s=v["median_s"] * n_skew,
                                                makespan_over_ideal=v["median_s"] * n_skew
                                                / ideal)
                                     if "median_s" in v else v
                                     for name, v in stats_json(skew_stats, B_ORDER,
                                                               ("swarm Batch",)
                                                               ).items()}},
            },
            "swarm_workers_left_running": leftover,
            "checks": [c.as_dict() for c in checks],
        })
        return 0

    h.print_header("swarm pool overhead", env, notes=[
        f"loky        {h.package_version('loky')}",
        f"mpire       {h.package_version('mpire')}",
        f"plan        {'--quick' if args.quick else 'default'}: {workers} workers per pool; "
        f"A: {n_noop} no-op tasks x {plan['noop_repeats']} repeats; "
        f"B: {n_skew} skewed tasks x {plan['skew_repeats']} repeats; median over repeats",
        f"start       {methods}",
        f"pin         {placement.describe()}",
        f"durations   lognormal seed {SKEW_SEED}, sigma {SKEW_SIGMA}, E = "
        f"{SKEW_MEAN_S * 1e3:g} ms: sample mean {np.mean(durations) * 1e3:.2f} ms, "
        f"max {max(durations) * 1e3:.1f} ms, sum {sum(durations):.3f} s; "
        f"ideal = sum / {workers} = {ideal:.3f} s",
    ])
    h.print_table(
        f"A: {n_noop} no-op tasks, microseconds per task   [peer/X > 1: swarm X faster]",
        ("case", "median us/task", "min us/task", "peer/Sprint", "peer/Batch"),
        noop_rows(noop_stats))
    h.print_table(
        f"B: {n_skew} skewed sleep tasks, ordered results   [ideal {ideal:.3f} s]",
        ("case", "median makespan s", "min s", "makespan/ideal", "peer/Batch"),
        skew_rows(skew_stats, n_skew, ideal))
    if leftover:
        print(f"WARNING: swarm workers still running after pool.close(): {leftover}\n")
    h.print_checks(checks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
