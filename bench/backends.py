"""Per-task overhead and payload throughput of swarm's backends: the local
pool, swarm on Dask (DaskBackend), and plain Dask ``client.submit``.

What is measured, in one run, with 2 workers everywhere (``--workers N``):
one local swarm Pool (worker processes over AF_UNIX), and one Dask
``LocalCluster(n_workers=N, threads_per_worker=1, processes=True)`` on
127.0.0.1 shared by the Dask cases (swarm on Dask and plain Dask).

Workload A: no-op tasks (2,000 per sample; 300 with ``--quick``)
  Each task is ``bench/_tasks.noop`` (returns None). One sample is the wall
  time from the first submission until every result is in the caller's
  hands, divided by the number of tasks (median and min over repeats).

    local Sprint           swarm Pool (local processes): one Sprint,
                           ``submit_tasks([(noop,)] * N)``, ``yield_results()``
    dask Sprint per-task   swarm Pool on DaskBackend: the same Sprint with a
                           task_timeout, which makes every task its own frame
                           and so its own Dask task (like-for-like with
                           client.submit)
    dask Batch             swarm Pool on DaskBackend: a BatchManager batch
                           (the pool chunks tiny tasks: several per Dask task)
    client.submit          plain Dask: ``[client.submit(noop, pure=False)
                           for _ in range(N)]`` then ``client.gather``

  "X/client.submit" is X's median time per task over plain Dask's: the
  Dask backend's target is <= 1.5 for "dask Sprint per-task".

Workload B: an 80 MiB float64 array in and out (5 round trips per sample;
  2 with ``--quick``): one task ``identity(array)``, its result back, checked
  bit-exact. Reported per round trip and as MB/s (160 MiB moved per trip).

    local Batch            swarm Pool (local): ``BatchManager(pool, [(identity, a)])``
    dask Batch             the same on DaskBackend
    client.submit(array)   plain Dask: ``client.submit(identity, a, pure=False)``
    scatter + submit       plain Dask: ``client.scatter(a)``, submit on that

``--quick`` is a smoke run for CI; ``--json`` prints one JSON document.
Without ``distributed`` installed, the Dask rows print "skipped".
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as h  # noqa: E402
import _tasks  # noqa: E402

DEFAULT_PLAN = {"noop_tasks": 2000, "noop_repeats": 5, "payload_trips": 5,
                "payload_repeats": 3, "watchdog_s": 600}
QUICK_PLAN = {"noop_tasks": 300, "noop_repeats": 2, "payload_trips": 2,
              "payload_repeats": 1, "watchdog_s": 240}
PAYLOAD_BYTES = 80 * 2**20
A_ORDER = ["local Sprint", "dask Sprint per-task", "dask Batch", "client.submit"]
B_ORDER = ["local Batch", "dask Batch", "client.submit(array)", "scatter + submit"]


def _configure(parser):
    parser.add_argument("--workers", type=int, default=2, help="workers per pool (default 2)")


def noop_cases(local, dask_pool, client):
    from swarm.client import BatchManager, Sprint

    def sprint_on(pool, **kwargs):
        sprint = pool.submit_sprint(Sprint(**kwargs))

        def run(n):
            sprint.submit_tasks([(_tasks.noop,)] * n)
            return sum(1 for _ in sprint.yield_results(timeout=120))
        return run

    cases = {"local Sprint": sprint_on(local)}
    if client is None:
        return cases

    cases["dask Sprint per-task"] = sprint_on(dask_pool, task_timeout=3600.0)

    def dask_batch(n):
        return len(BatchManager(dask_pool, [(_tasks.noop,)] * n).batch.list_results(timeout=120))
    cases["dask Batch"] = dask_batch

    def plain(n):
        futures = [client.submit(_tasks.noop, pure=False) for _ in range(n)]
        results = client.gather(futures)
        del futures
        return len(results)
    cases["client.submit"] = plain
    return cases


def payload_cases(local, dask_pool, client, array):
    from swarm.client import BatchManager

    def on_pool(pool):
        def run(n):
            for _ in range(n):
                [back] = BatchManager(pool, [(_tasks.identity, array)]).batch.list_results(timeout=120)
            return back
        return run

    cases = {"local Batch": on_pool(local)}
    if client is None:
        return cases
    cases["dask Batch"] = on_pool(dask_pool)

    def plain(n):
        for _ in range(n):
            back = client.submit(_tasks.identity, array, pure=False).result(timeout=120)
        return back

    def scattered(n):
        for _ in range(n):
            [data] = client.scatter([array], hash=False)
            back = client.submit(_tasks.identity, data, pure=False).result(timeout=120)
            del data
        return back
    cases["client.submit(array)"] = plain
    cases["scatter + submit"] = scattered
    return cases


def main(argv=None) -> int:
    args = h.parse_args(__doc__.splitlines()[0], argv, configure=_configure)
    plan = dict(QUICK_PLAN if args.quick else DEFAULT_PLAN)
    workers = args.workers
    env = h.environment()
    watchdog = h.start_watchdog(plan["watchdog_s"], "backends")
    warnings.filterwarnings("ignore", message=".*large graph.*")  # client.submit(array): Dask's advice, measured anyway
    logging.getLogger("distributed").setLevel(logging.ERROR)
    array = np.random.default_rng(0).random(PAYLOAD_BYTES // 8)

    from swarm.client import Pool
    try:
        import distributed
        from swarm.dask_backend import DaskBackend
    except ImportError:
        distributed = None

    with contextlib.ExitStack() as stack:
        local = stack.enter_context(Pool(workers=workers))
        client = dask_pool = None
        if distributed is not None:
            cluster = stack.enter_context(distributed.LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=None))
            client = stack.enter_context(distributed.Client(cluster))
            dask_pool = stack.enter_context(Pool(workers=workers,
                                                 backend=DaskBackend(client, scale=False)))
        a_cases = noop_cases(local, dask_pool, client)
        b_cases = payload_cases(local, dask_pool, client, array)

        def check_noop(name, n, value):
            if value != n:
                raise AssertionError(f"{name}: {value} results for {n} tasks")

        def check_payload(name, n, value):
            if value.tobytes() != array.tobytes():
                raise AssertionError(f"{name}: the array came back changed")

        noop_stats = h.measure(a_cases, repeats=plan["noop_repeats"],
                               number=plan["noop_tasks"], warmup=100, check=check_noop)
        payload_stats = h.measure(b_cases, repeats=plan["payload_repeats"],
                                  number=plan["payload_trips"], warmup=1, check=check_payload)
    watchdog.set()

    base = noop_stats.get("client.submit")
    moved_mb = 2 * PAYLOAD_BYTES / 1e6
    per_task = noop_stats.get("dask Sprint per-task")
    target = (per_task.median / base.median) if (per_task and base) else None
    checks = []
    if target is not None:
        checks.append(h.Check("dask Sprint per-task within 1.5x of client.submit",
                              target <= 1.5, f"ratio {target:.2f}"))

    if args.json:
        h.emit_json({
            "benchmark": "backends", "environment": env,
            "plan": dict(plan, quick=args.quick, workers=workers),
            "versions": {"distributed": h.package_version("distributed")},
            "results": {
                "noop": {"unit": "seconds per task", "tasks": plan["noop_tasks"],
                         "cases": {k: v.as_dict() for k, v in noop_stats.items()}},
                "payload": {"unit": "seconds per round trip", "bytes": PAYLOAD_BYTES,
                            "cases": {k: v.as_dict() for k, v in payload_stats.items()}},
            },
            "checks": [c.as_dict() for c in checks],
        })
        return 0

    h.print_header("swarm backends: local pool, swarm on Dask, plain Dask", env, notes=[
        f"distributed {h.package_version('distributed')}",
        f"plan        {'--quick' if args.quick else 'default'}: {workers} workers each; "
        f"A: {plan['noop_tasks']} no-op tasks x {plan['noop_repeats']} repeats; "
        f"B: 80 MiB echo x {plan['payload_trips']} trips x {plan['payload_repeats']} repeats; "
        "median over repeats",
    ])
    rows = []
    for name in A_ORDER:
        s = noop_stats.get(name)
        if s is None:
            rows.append((name, "skipped", "", ""))
            continue
        rows.append((name, f"{s.median * 1e6:.1f}", f"{s.min * 1e6:.1f}",
                     f"{h.ratio(s.median, base.median):.2f}" if base else ""))
    h.print_table(f"A: {plan['noop_tasks']} no-op tasks, microseconds per task",
                  ("case", "median us/task", "min us/task", "X/client.submit"), rows)
    rows = []
    for name in B_ORDER:
        s = payload_stats.get(name)
        if s is None:
            rows.append((name, "skipped", "", ""))
            continue
        rows.append((name, f"{s.median * 1e3:.1f}", f"{s.min * 1e3:.1f}",
                     f"{moved_mb / s.median:.0f}"))
    h.print_table("B: 80 MiB array in and out, per round trip",
                  ("case", "median ms", "min ms", "MB/s (in+out)"), rows)
    h.print_checks(checks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
