"""Pool start-up and shutdown: from the constructor to the first result, then close.

What is measured, in one run, with the same number of worker processes for
every pool (``--workers N``, default 2):

Per sample, a fresh pool (nothing is reused from one sample to the next):
  first result   wall time from calling the pool's constructor until the
                 result of one trivial task (bench/_tasks.py ``noop``) is in
                 the caller's hands: the pool's own start-up plus one task,
                 the latency a short script pays before any work gets done.
                 Imports are not in it (every library is imported before
                 timing).
  close          wall time of the shutdown call right after, until it
                 returns (the pool's workers have exited, or been told to;
                 each library's own meaning of its graceful shutdown).

    swarm Pool           ``Pool(workers=N)``; ``BatchManager(pool, [(noop,)])
                         .batch``, ``start()``, ``list_results()``; close:
                         ``pool.close()`` (stops and reaps every worker)
    mp Pool (fork)       ``multiprocessing.get_context("fork").Pool(N)``;
                         ``apply(noop)``; close: ``close()`` + ``join()``
    mp Pool (spawn)      the same with the "spawn" context
    PPE (fork)           ``concurrent.futures.ProcessPoolExecutor(N,
                         mp_context=get_context("fork"))``;
                         ``submit(noop).result()``; close:
                         ``shutdown(wait=True)``
    PPE (spawn)          the same with the "spawn" context
    loky (loky)          a fresh ``loky.ProcessPoolExecutor(N)`` (not
                         ``get_reusable_executor``, which would reuse the
                         workers), its default "loky" start method;
                         ``submit(noop).result()``; close:
                         ``shutdown(wait=True)``
    mpire (fork)         ``mpire.WorkerPool(n_jobs=N, keep_alive=True)``
                         (its default start method, fork); ``apply(noop)``;
                         close: ``stop_and_join()``
    Ray                  ``ray.init(num_cpus=N, ...)`` (a local Ray instance:
                         its daemons and workers), then
                         ``ray.get(ray.remote(noop).remote())``; close:
                         ``ray.shutdown()``. The header splits "first
                         result" into ``ray.init`` and the first task after
                         it. Optional (``pip install ray``); 3 samples (1
                         with ``--quick``): each takes seconds.

  "peer/swarm" is the peer's median over swarm's, for "first result" and
  for "close": > 1 means swarm is faster.

Method
  Each case runs once untimed (page cache, the workers' first imports),
  except Ray; then 10 samples each (2 with ``--quick``), interleaved across
  cases (the order rotates from one repeat to the next) so that noise hits
  every case alike; the gc is off while a sample is timed. Ray's samples
  come after all the others (its daemons outlive ``ray.shutdown`` by a
  little and would tax the next case). ``--pin same`` puts this process
  and every worker on one CPU; ``--pin split`` is refused here (workers
  start all through the run, so there is no "after the children").

  Byte-compile first when the environment sets PYTHONDONTWRITEBYTECODE
  (``python -m compileall swarm bench``): otherwise every swarm worker, and
  every spawned peer worker that re-imports this script, compiles modules
  from source at each start (here +20-30 ms per worker); an installed wheel
  is byte-compiled by pip. The header warns when swarm's modules have no
  up-to-date .pyc.

The check printed at the end is informational (the performance issue's
target): the script exits 0 whether it passes or not. A watchdog
(``--watchdog``, seconds) dumps the stacks, kills this process's descendant
processes and exits 3 if a run hangs.

Usage: python bench/startup.py [--workers N] [--quick] [--json] [--no-ray]
                               [--pin {none,same}] [--watchdog S]
"""

from __future__ import annotations

import concurrent.futures
import gc
import importlib.util
import multiprocessing
import os
import sys
import time

from swarm.client import BatchManager, Pool

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as h  # noqa: E402
import _peers as P  # noqa: E402
from _tasks import noop  # noqa: E402

DEFAULT_PLAN = dict(repeats=10, ray_repeats=3, watchdog_s=600)
QUICK_PLAN = dict(repeats=2, ray_repeats=1, watchdog_s=180)
BASE = "swarm Pool"
RAY = "Ray"
ORDER = (BASE, "mp Pool (fork)", "mp Pool (spawn)", "PPE (fork)", "PPE (spawn)",
         "loky (loky)", "mpire (fork)", RAY)


def uncompiled_swarm_modules() -> list:
    """swarm's pure-Python modules that have no up-to-date .pyc: a worker
    compiles them from source at every start (PYTHONDONTWRITEBYTECODE in a
    source checkout), tens of milliseconds that an installed wheel, byte-
    compiled by pip, does not pay."""
    import swarm
    package = os.path.dirname(os.path.abspath(swarm.__file__))
    out = []
    for name in sorted(os.listdir(package)):
        if not name.endswith(".py"):
            continue
        source = os.path.join(package, name)
        cached = importlib.util.cache_from_source(source)
        if not os.path.exists(cached) or os.path.getmtime(cached) < os.path.getmtime(source):
            out.append(name)
    return out


def _timed(start, first, close):
    """Run one sample: ``pool = start()``, ``first(pool)`` (must return
    None, the noop's result), ``close(pool)``; returns the two times."""
    t0 = time.perf_counter()
    pool = start()
    result = first(pool)
    t1 = time.perf_counter()
    close(pool)
    t2 = time.perf_counter()
    if result is not None:
        raise AssertionError(f"wrong first result: {result!r}")
    return {"first": t1 - t0, "close": t2 - t1}


def build_cases(workers: int) -> dict:
    """name -> fn() returning {"first": s, "close": s} (None: not installed)."""
    def swarm_first(pool):
        batch = BatchManager(pool, [(noop,)]).batch
        batch.start()
        return batch.list_results()[0]

    def mp_case(method):
        ctx = multiprocessing.get_context(method)

        def close(pool):
            pool.close()
            pool.join()
        return lambda: _timed(lambda: ctx.Pool(workers), lambda p: p.apply(noop), close)

    def ppe_case(method):
        ctx = multiprocessing.get_context(method)
        return lambda: _timed(
            lambda: concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx),
            lambda p: p.submit(noop).result(), lambda p: p.shutdown(wait=True))

    cases = {
        BASE: lambda: _timed(lambda: Pool(workers=workers), swarm_first, lambda p: p.close()),
        "mp Pool (fork)": mp_case("fork"), "mp Pool (spawn)": mp_case("spawn"),
        "PPE (fork)": ppe_case("fork"), "PPE (spawn)": ppe_case("spawn"),
        "loky (loky)": None, "mpire (fork)": None,
    }
    loky = P.optional("loky")
    if loky is not None:
        cases["loky (loky)"] = lambda: _timed(
            lambda: loky.ProcessPoolExecutor(max_workers=workers),
            lambda p: p.submit(noop).result(), lambda p: p.shutdown(wait=True))
    mpire = P.optional("mpire")
    if mpire is not None:
        def mpire_start():
            return mpire.WorkerPool(n_jobs=workers, keep_alive=True, start_method="fork")

        def mpire_close(pool):
            try:
                pool.stop_and_join()
            finally:
                pool.terminate()
        cases["mpire (fork)"] = lambda: _timed(mpire_start, lambda p: p.apply(noop),
                                               mpire_close)
    return cases


def ray_sample(ray, workers: int) -> dict:
    t0 = time.perf_counter()
    P.ray_init(ray, workers)
    t1 = time.perf_counter()
    try:
        result = ray.get(ray.remote(noop).remote())
        t2 = time.perf_counter()
    finally:
        t3 = time.perf_counter()
        ray.shutdown()
        t4 = time.perf_counter()
    if result is not None:
        raise AssertionError(f"Ray: wrong first result: {result!r}")
    return {"first": t2 - t0, "close": t4 - t3, "init": t1 - t0, "first_task": t2 - t1}


def run_samples(cases: dict, repeats: int) -> dict:
    """name -> {"first": Stats, "close": Stats}; interleaved, gc off."""
    names = list(cases)
    out = {name: {"first": h.Stats(), "close": h.Stats()} for name in names}
    gc_was_enabled = gc.isenabled()
    try:
        for r in range(repeats):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                gc.collect()
                gc.disable()
                sample = cases[name]()
                if gc_was_enabled:
                    gc.enable()
                for key, stats in out[name].items():
                    stats.samples.append(sample[key])
    finally:
        if gc_was_enabled:
            gc.enable()
    return out


def ray_samples(args, workers: int, repeats: int):
    if args.no_ray:
        return None, {"skipped": "--no-ray"}
    ray = P.optional("ray")
    if ray is None:
        return None, {"skipped": f"not installed; {P.RAY_HOWTO}"}
    keys = ("first", "close", "init", "first_task")
    stats = {key: h.Stats() for key in keys}
    for _ in range(repeats):
        gc.collect()
        sample = ray_sample(ray, workers)
        for key in keys:
            stats[key].samples.append(sample[key])
    return stats, {"version": ray.__version__, "repeats": repeats}


def rows(stats: dict) -> list:
    base = stats[BASE]
    out = []
    for name in ORDER:
        s = stats.get(name)
        if s is None:
            out.append([name, "skipped"] + ["-"] * 5)
            continue
        first, close = s["first"], s["close"]
        out.append([name, f"{first.median * 1e3:.1f}", f"{first.min * 1e3:.1f}",
                    f"{close.median * 1e3:.1f}", f"{close.min * 1e3:.1f}",
                    f"{h.ratio(first.median, base['first'].median):.2f}",
                    f"{h.ratio(close.median, base['close'].median):.2f}"])
    return out


def make_checks(stats: dict) -> list:
    swarm = stats[BASE]["first"].median
    loky = stats.get("loky (loky)")
    label = "Pool() to first result no slower than loky"
    if loky is None:
        return [h.Check(label, None, "loky not installed")]
    lk = loky["first"].median
    return [h.Check(label, swarm <= lk,
                    f"swarm {swarm * 1e3:.1f} ms vs loky {lk * 1e3:.1f} ms "
                    f"(loky/swarm = {lk / swarm:.2f}x, need 1.00x)")]


def main(argv=None) -> int:
    args, plan = P.parse_args(__doc__.splitlines()[0], argv, DEFAULT_PLAN, QUICK_PLAN)
    if args.pin == "split":
        raise SystemExit("startup.py: --pin split is not supported (workers start all "
                         "through the run); use --pin none or --pin same")
    env = h.environment()
    placement = h.Placement(args.pin)
    placement.before_children()      # "same": this process and every child on one CPU
    watchdog = h.start_watchdog(plan["watchdog_s"], "startup")

    cases = {name: fn for name, fn in build_cases(args.workers).items() if fn is not None}
    for fn in cases.values():
        fn()                          # warm-up, untimed
    stats = run_samples(cases, plan["repeats"])
    ray_stats, ray_info = ray_samples(args, args.workers, plan["ray_repeats"])
    if ray_stats is not None:
        stats[RAY] = ray_stats
    watchdog.set()
    skipped = {RAY: ray_info.get("skipped", "")}
    checks = make_checks(stats)
    uncompiled = uncompiled_swarm_modules()

    if args.json:
        base = stats[BASE]
        results = {}
        for name in ORDER:
            s = stats.get(name)
            if s is None:
                results[name] = {"skipped": skipped.get(name, "not installed")}
                continue
            results[name] = {key: dict(v.as_dict(), ratio_over_swarm=h.ratio(
                v.median, base[key].median)) if key in base else v.as_dict()
                for key, v in s.items()}
        h.emit_json({
            "benchmark": "startup", "environment": env,
            "plan": dict(plan, quick=args.quick, pin=args.pin, workers=args.workers),
            "placement": placement.describe(), "versions": P.versions(), "ray": ray_info,
            "results": {"unit": "seconds", "first": "constructor to first result",
                        "close": "shutdown call", "cases": results},
            "swarm_modules_without_pyc": uncompiled,
            "checks": [c.as_dict() for c in checks],
        })
        return 0

    notes = [
        *P.version_notes(),
        P.plan_note(args, f"a fresh pool per sample; {plan['repeats']} samples per case "
                          f"(Ray {plan['ray_repeats']}), median over samples"),
        f"pin         {placement.describe()}",
    ]
    if uncompiled:
        notes.append(f"WARNING     no .pyc for swarm/{', '.join(uncompiled)}: each worker "
                     "compiles them at start (PYTHONDONTWRITEBYTECODE?); "
                     "`python -m compileall swarm bench` first, as a wheel install does")
    if ray_stats is not None:
        notes.append(f"ray         {ray_info['version']}: ray.init median "
                     f"{ray_stats['init'].median * 1e3:.0f} ms + first task "
                     f"{ray_stats['first_task'].median * 1e3:.0f} ms; sampled after the "
                     f"others, not interleaved")
    h.print_header("swarm: pool start-up and shutdown", env, notes=notes)
    h.print_table(
        "constructor to first result of one no-op task, then close; milliseconds   "
        "[peer/swarm > 1: swarm faster]",
        ("case", "first median ms", "first min ms", "close median ms", "close min ms",
         "first peer/swarm", "close peer/swarm"),
        rows(stats))
    P.print_skip_notes(stats, ORDER, skipped)
    h.print_checks(checks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
