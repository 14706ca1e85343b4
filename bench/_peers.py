"""The pools the per-workload scripts in bench/ compare, started alike.

- ``configure``: the flags every workload script shares (``--workers``,
  ``--watchdog``, ``--no-ray``), next to _harness's ``--quick``, ``--json``
  and ``--pin``; ``parse_args`` parses them all and picks the plan.
- ``Run``: one run of a script that measures warm pools: flags, plan,
  placement and watchdog; ``pool_phase`` then ``ray_phase``; the JSON
  document, the header and the table, skip notes and checks, in the form
  they all share.
- ``start_pools``: swarm's Pool, ``multiprocessing.Pool``,
  ``concurrent.futures.ProcessPoolExecutor`` (PPE), loky's
  ``ProcessPoolExecutor`` and mpire's ``WorkerPool``, each with the same
  worker count, each shut down by the caller's ExitStack; a peer that is
  not installed is absent. ``start_methods`` names how each starts workers.
- ``pool_phase``: start those pools, warm every case up, measure, close.
- ``ray_phase``: Ray, when installed, measured in a phase of its own after
  the other pools are closed (see its docstring for why).
- ``make_arrays`` / ``swarm_empty_copies``: the numpy workloads' payloads;
  ``array_cases`` / ``array_ray_cases`` / ``array_checks`` /
  ``array_report``: their cases (one 8 MiB array per task through each
  pool), their checks against Ray and their output (GB/s, ms per task).
- ``case_rows`` / ``cases_json``: table rows and JSON for a set of cases,
  with "skipped" rows and the peer / swarm ratio.

Ray is optional and not in the ``bench`` extra (it is large, and CI stays
light): ``pip install ray`` next to swarm to get its rows.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import _harness as h

RAY_HOWTO = "pip install ray (not in the bench extra)"


def configure(parser, *, default_watchdog_s: float, quick_watchdog_s: float) -> None:
    """Add ``--workers``, ``--watchdog`` and ``--no-ray`` to ``parser``."""
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes for every pool (default 2)")
    parser.add_argument("--watchdog", type=float, default=None,
                        help="seconds before a hung run is killed (0: never; default "
                             f"{default_watchdog_s:g}, {quick_watchdog_s:g} with --quick)")
    parser.add_argument("--no-ray", action="store_true",
                        help="leave Ray out even when it is installed (its start-up "
                             "takes seconds)")


def parse_args(description: str, argv: Optional[Sequence[str]], default_plan: dict,
               quick_plan: dict):
    """Parse _harness's flags and ``configure``'s (the ``--watchdog`` help
    names both plans' ``watchdog_s``); returns (args, plan), the plan per
    ``_harness.pick_plan``."""
    args = h.parse_args(description, argv, configure=lambda p: configure(
        p, default_watchdog_s=default_plan["watchdog_s"],
        quick_watchdog_s=quick_plan["watchdog_s"]))
    if args.workers < 1:
        raise SystemExit("--workers must be >= 1")
    return args, h.pick_plan(args, default_plan, quick_plan)


def plan_note(args, detail: str) -> str:
    """The header's "plan" line: --quick or default, workers, then ``detail``."""
    return (f"plan        {'--quick' if args.quick else 'default'}: {args.workers} workers "
            f"per pool; {detail}")


def optional(name: str):
    """The module ``name``, or None when it is not installed."""
    try:
        return __import__(name)
    except ImportError:
        return None


def pin_threads(cpus) -> None:
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


def start_pools(stack: contextlib.ExitStack, workers: int,
                names: Sequence[str] = ("swarm", "mp", "PPE", "loky", "mpire")) -> dict:
    """Start the pools named in ``names``; their shutdown goes on ``stack``.

    Each library's default start method; mpire with ``keep_alive=True`` (the
    one non-default setting: without it every ``map`` would start and stop
    its workers).
    """
    pools: Dict[str, Any] = {}
    if "swarm" in names:
        from swarm.client import Pool
        pool = Pool(workers=workers)
        stack.callback(pool.close)
        pools["swarm"] = pool
    if "mp" in names:
        mp_pool = multiprocessing.Pool(workers)

        def stop_mp():
            mp_pool.close()
            mp_pool.join()
        stack.callback(stop_mp)
        pools["mp"] = mp_pool
    if "PPE" in names:
        ppe = concurrent.futures.ProcessPoolExecutor(max_workers=workers)
        stack.callback(ppe.shutdown, wait=True)
        pools["PPE"] = ppe
    loky = optional("loky") if "loky" in names else None
    if loky is not None:
        lex = loky.ProcessPoolExecutor(max_workers=workers)
        stack.callback(lex.shutdown, wait=True)
        pools["loky"] = lex
    mpire = optional("mpire") if "mpire" in names else None
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
    parts = []
    if "swarm" in pools:
        parts.append("swarm: subprocess")
    if "mp" in pools:
        parts.append(f"mp: {multiprocessing.get_start_method()}")
    if "PPE" in pools:
        ctx = getattr(pools["PPE"], "_mp_context", None)
        parts.append("PPE: " + (ctx.get_start_method() if ctx is not None else "default"))
    if "loky" in pools:
        parts.append("loky: loky")
    if "mpire" in pools:
        parts.append(f"mpire: {pools['mpire'].pool_params.start_method}")
    return ", ".join(parts)


def versions() -> Dict[str, str]:
    return {m: h.package_version(m) for m in ("loky", "mpire", "ray")}


def version_notes() -> list:
    return [f"{m.ljust(11)} {v}" for m, v in versions().items()]


def pool_phase(placement: h.Placement, workers: int, names: Sequence[str],
               build: Callable[[dict], Dict[str, Optional[Callable[[int], Any]]]],
               *, repeats: int, number: int, warmup: int,
               check: Optional[Callable[[str, int, Any], None]] = None
               ) -> Tuple[Dict[str, h.Stats], str, list]:
    """Start the pools, measure the cases ``build(pools)`` returns (name ->
    fn(n), or None for a peer that is not installed), close the pools.

    Every case is warmed up (``fn(warmup)``, checked) while this process
    still has the children's CPUs, so that workers a pool starts lazily
    (ProcessPoolExecutor) land there too; then ``_harness.measure``.
    Returns (stats, start methods, swarm workers still alive after close).
    """
    with contextlib.ExitStack() as stack:
        placement.before_children()
        pools = start_pools(stack, workers, names)
        live = {name: fn for name, fn in build(pools).items() if fn is not None}
        for name, fn in live.items():
            value = fn(warmup)
            if check is not None:
                check(name, warmup, value)
            del value
        placement.after_children()
        pin_threads(placement.parent_cpus)
        methods = start_methods(pools)
        stats = h.measure(live, repeats=repeats, number=number, warmup=warmup, check=check)
        swarm_pids = pools["swarm"].pids if "swarm" in pools else []
    leftover = [p for p in swarm_pids if os.path.exists(f"/proc/{p}")]
    return stats, methods, leftover


# ---------------------------------------------------------------- Ray

def ray_init(ray, workers: int) -> None:
    """``ray.init`` for a local run with ``workers`` CPUs: no dashboard, the
    workers' output not forwarded, and this process's ``sys.path`` given to
    the workers (so they import bench/_tasks.py and this swarm)."""
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                 p or os.getcwd() for p in sys.path)}})


def ray_phase(args, placement: h.Placement, workers: int,
              build: Callable[[Any, contextlib.ExitStack], Dict[str, Callable[[int], Any]]],
              *, repeats: int, number: int, warmup: int,
              check: Optional[Callable[[str, int, Any], None]] = None
              ) -> Tuple[Dict[str, h.Stats], dict]:
    """Measure Ray's cases; returns (stats, info).

    Ray runs after the other pools are closed, in a phase of its own: its
    daemons (GCS, raylet, idle workers) keep running in the background and
    would tax every other case on a small machine. So Ray's samples are not
    interleaved with the others'; the ratio still divides by swarm's median
    from the main phase. ``build(ray, stack)`` returns name -> fn(n), as for
    ``_harness.measure``; ``info`` says whether Ray ran, its version and
    ``ray.init`` time, or why it was skipped.
    """
    if args.no_ray:
        return {}, {"skipped": "--no-ray"}
    ray = optional("ray")
    if ray is None:
        return {}, {"skipped": f"not installed; {RAY_HOWTO}"}
    with contextlib.ExitStack() as stack:
        placement.before_children()
        t0 = time.perf_counter()
        ray_init(ray, workers)
        init_s = time.perf_counter() - t0
        stack.callback(ray.shutdown)
        cases = build(ray, stack)
        placement.after_children()
        pin_threads(placement.parent_cpus)
        stats = h.measure(cases, repeats=repeats, number=number, warmup=warmup, check=check)
    return stats, {"version": ray.__version__, "init_s": init_s, "number": number}


def ray_notes(info: dict) -> list:
    """Header lines about the Ray phase (none when it was skipped: the
    table's skip notes say why)."""
    if "skipped" in info:
        return []
    return [f"ray         {info['version']}: measured after the other pools closed "
            f"(ray.init {info['init_s']:.1f} s, not timed), {info['number']} "
            f"operations per sample"]


# ---------------------------------------------------------------- a run

class Run:
    """One run of a script that measures warm pools, from its flags to its
    report.

    The constructor parses the flags (``parse_args``), then takes the
    environment, the placement (``--pin``) and starts the watchdog, named
    ``name``. ``measure`` runs ``pool_phase`` then ``ray_phase`` and stops
    the watchdog; ``emit_json``, ``print_header`` and ``print_report`` give
    the parts of the output every such script shares, around what the
    script passes in.
    """

    def __init__(self, name: str, description: str, argv: Optional[Sequence[str]],
                 default_plan: dict, quick_plan: dict) -> None:
        self.name = name
        self.args, self.plan = parse_args(description, argv, default_plan, quick_plan)
        self.env = h.environment()
        self.placement = h.Placement(self.args.pin)
        self.watchdog = h.start_watchdog(self.plan["watchdog_s"], name)
        self.stats: Dict[str, h.Stats] = {}
        self.methods = ""
        self.leftover: List[int] = []
        self.ray_info: dict = {}

    def measure(self, build: Callable[[dict], Dict[str, Optional[Callable[[int], Any]]]],
                build_ray: Callable[[Any, contextlib.ExitStack], Dict[str, Callable[[int], Any]]],
                *, number: int, warmup: int, check: Optional[Callable[[str, int, Any], None]],
                ray_number: Optional[int] = None) -> Dict[str, h.Stats]:
        """Every pool's cases (``pool_phase``, ``build``) then Ray's
        (``ray_phase``, ``build_ray``; ``ray_number`` operations per sample,
        default ``number``), ``plan["repeats"]`` each; returns the stats of
        both, by case name."""
        repeats = self.plan["repeats"]
        self.stats, self.methods, self.leftover = pool_phase(
            self.placement, self.args.workers, ("swarm", "mp", "PPE", "loky", "mpire"), build,
            repeats=repeats, number=number, warmup=warmup, check=check)
        ray_stats, self.ray_info = ray_phase(
            self.args, self.placement, self.args.workers, build_ray, repeats=repeats,
            number=number if ray_number is None else ray_number, warmup=warmup, check=check)
        self.stats.update(ray_stats)
        self.watchdog.set()
        return self.stats

    def ray_skipped(self, *names: str) -> Dict[str, str]:
        """Why Ray's cases ``names`` were skipped, for ``print_report`` (an
        empty reason when they ran)."""
        return {name: self.ray_info.get("skipped", "") for name in names}

    def emit_json(self, results: dict, checks: Sequence[h.Check]) -> None:
        """The JSON document: what the run was (plan, placement, start
        methods, versions, Ray), ``results``, leftover workers, checks."""
        args = self.args
        h.emit_json({
            "benchmark": self.name, "environment": self.env,
            "plan": dict(self.plan, quick=args.quick, pin=args.pin, workers=args.workers),
            "placement": self.placement.describe(), "start_methods": self.methods,
            "versions": versions(), "ray": self.ray_info,
            "results": results,
            "swarm_workers_left_running": self.leftover,
            "checks": [c.as_dict() for c in checks],
        })

    def print_header(self, title: str, plan_detail: str, notes: Sequence[str] = ()) -> None:
        """The header: versions, the plan line (``plan_note``), start
        methods, placement, the script's ``notes``, Ray's phase."""
        h.print_header(title, self.env, notes=[
            *version_notes(),
            plan_note(self.args, plan_detail),
            f"start       {self.methods}",
            f"pin         {self.placement.describe()}",
            *notes,
            *ray_notes(self.ray_info),
        ])

    def print_report(self, title: str, headers: Sequence[str], order: Sequence[str],
                     base: str, cells: Callable[[h.Stats], Sequence[str]],
                     skipped: Dict[str, str], checks: Sequence[h.Check]) -> None:
        """The table (``case_rows``), why rows were skipped, a warning if
        swarm workers outlived ``pool.close()``, then the checks."""
        h.print_table(title, headers, case_rows(self.stats, order, base, cells))
        print_skip_notes(self.stats, order, skipped)
        if self.leftover:
            print(f"WARNING: swarm workers still running after pool.close(): "
                  f"{self.leftover}\n")
        h.print_checks(checks)


# ---------------------------------------------------------------- arrays

ARRAY_BYTES = 8 * 1024 * 1024     # one payload: 8 MiB of float64
DISTINCT_ARRAYS = 8               # payloads cycle over this many (64 MiB in all)
SWARM_EMPTY_ROW_SUFFIX = " (swarm.empty)"


def make_arrays(seed: int = 0) -> list:
    """DISTINCT_ARRAYS C-contiguous float64 arrays of ARRAY_BYTES each, of
    whole numbers 0..255, so that every sum is exact whatever the order."""
    import numpy as np
    rng = np.random.default_rng(seed)
    n = ARRAY_BYTES // 8
    return [rng.integers(0, 256, size=n).astype(np.float64) for _ in range(DISTINCT_ARRAYS)]


def swarm_empty_copies(arrays: list) -> Tuple[Optional[list], str]:
    """Copies of ``arrays`` allocated with ``swarm.empty`` (shared memory,
    sent without a copy), or (None, why not) when this swarm has no
    ``swarm.empty`` or it fails."""
    import swarm
    if not hasattr(swarm, "empty"):
        return None, "this swarm has no swarm.empty yet"
    try:
        copies = []
        for a in arrays:
            b = swarm.empty(a.shape, a.dtype)
            b[...] = a
            copies.append(b)
    except Exception as exc:  # report it as a skipped row, keep the other rows
        return None, f"swarm.empty failed: {exc!r}"
    return copies, ""


ARRAY_BASE = "swarm Batch"
ARRAY_EMPTY = ARRAY_BASE + SWARM_EMPTY_ROW_SUFFIX
ARRAY_RAY = "Ray remote"
ARRAY_RAY_PREPUT = "Ray pre-put refs"
ARRAY_ORDER = (ARRAY_BASE, ARRAY_EMPTY, "mp map cs=1", "PPE map", "loky map", "mpire map cs=1",
               ARRAY_RAY, ARRAY_RAY_PREPUT)


def pick(items: list, n: int) -> list:
    """The first ``n`` items of ``items`` repeated: task i gets items[i % len]."""
    return [items[i % len(items)] for i in range(n)]


def array_cases(pools: dict, fn: Callable, arrays: list, empty_arrays: Optional[list],
                **mpire_kwargs) -> Dict[str, Optional[Callable[[int], list]]]:
    """The numpy workloads' cases, name -> fn(n) returning the n results in
    task order (None: not installed or, for ARRAY_EMPTY, no swarm.empty):
    one task per array, ``fn(a)``, with chunk size 1 wherever a pool has
    one. ``mpire_kwargs`` go to ``WorkerPool.map``."""
    from swarm.client import BatchManager
    pool = pools["swarm"]

    def swarm_batch_over(source):
        def run(n):
            batch = BatchManager(pool, [(fn, a) for a in pick(source, n)]).batch
            batch.start()
            return batch.list_results()
        return run

    mp_pool = pools["mp"]

    def mp_map(n):
        return mp_pool.map(fn, pick(arrays, n), chunksize=1)

    def executor_map(ex):
        return lambda n: list(ex.map(fn, pick(arrays, n)))

    def mpire_map(mwp):
        return lambda n: mwp.map(fn, pick(arrays, n), chunk_size=1, **mpire_kwargs)

    return {ARRAY_BASE: swarm_batch_over(arrays),
            ARRAY_EMPTY: swarm_batch_over(empty_arrays) if empty_arrays is not None else None,
            "mp map cs=1": mp_map, "PPE map": executor_map(pools["PPE"]),
            "loky map": executor_map(pools["loky"]) if "loky" in pools else None,
            "mpire map cs=1": mpire_map(pools["mpire"]) if "mpire" in pools else None}


def array_ray_cases(fn: Callable, arrays: list):
    """``build`` for ``ray_phase``: ARRAY_RAY (``fn.remote(a)``, Ray puts
    each array in its store) and ARRAY_RAY_PREPUT (the arrays ``ray.put``
    once, the tasks carry their refs)."""
    def build(ray, _stack) -> dict:
        remote = ray.remote(fn)
        refs = [ray.put(a) for a in arrays]

        def ray_remote(n):
            return ray.get([remote.remote(a) for a in pick(arrays, n)])

        def ray_preput(n):
            return ray.get([remote.remote(r) for r in pick(refs, n)])
        return {ARRAY_RAY: ray_remote, ARRAY_RAY_PREPUT: ray_preput}
    return build


def array_checks(stats: Dict[str, h.Stats], what: str, over_ray: float) -> list:
    """For swarm Batch and its swarm.empty row: throughput at least
    ``over_ray`` times Ray remote's (SKIP when either did not run)."""
    checks = []
    for name in (ARRAY_BASE, ARRAY_EMPTY):
        label = f"{name}: 8 MiB {what} >= {over_ray:g}x Ray's throughput"
        if name not in stats:
            checks.append(h.Check(label, None, f"{name} skipped"))
        elif ARRAY_RAY not in stats:
            checks.append(h.Check(label, None, "Ray skipped"))
        else:
            swarm, ray = stats[name].median, stats[ARRAY_RAY].median
            checks.append(h.Check(label, ray >= over_ray * swarm,
                                  f"swarm/Ray throughput = {ray / swarm:.2f}x "
                                  f"(need {over_ray:.2f}x)"))
    return checks


def gbps(nbytes: int, seconds: float) -> float:
    """Throughput in GB/s (1 GB = 1e9 bytes)."""
    return nbytes / seconds / 1e9 if seconds > 0 else float("inf")


def array_report(run: Run, order: Sequence[str], skipped: Dict[str, str],
                 checks: Sequence[h.Check], *, bytes_per_task: int, gbps_counts: str,
                 title: str, table_title: str) -> None:
    """The numpy workloads' output, JSON or header and table: per case the
    throughput (``bytes_per_task`` per task over the median time;
    ``gbps_counts`` says what it counts), median and min ms per task,
    peer/swarm."""
    n = run.plan["tasks"]
    if run.args.json:
        run.emit_json({
            "unit": "seconds per task", "tasks": n, "array_bytes": ARRAY_BYTES,
            "gbps_counts": gbps_counts,
            "cases": cases_json(run.stats, order, ARRAY_BASE, skipped, extra=lambda s: {
                "gbps_median": gbps(bytes_per_task, s.median)})}, checks)
        return
    run.print_header(title, f"{n} tasks x 8 MiB per sample x {run.plan['repeats']} repeats, "
                            f"median over repeats")
    run.print_report(
        table_title, ("case", "GB/s", "median ms/task", "min ms/task", "peer/swarm"), order,
        ARRAY_BASE, lambda s: (f"{gbps(bytes_per_task, s.median):.2f}",
                               f"{s.median * 1e3:.2f}", f"{s.min * 1e3:.2f}"),
        skipped, checks)


# ---------------------------------------------------------------- report

def case_rows(stats: Dict[str, h.Stats], order: Sequence[str], base: str,
              cells: Callable[[h.Stats], Sequence[str]]) -> list:
    """One row per case in ``order``: name, ``cells(stats)``, peer/base; a
    case without stats is a "skipped" row (``skip_notes`` says why)."""
    rows = []
    for name in order:
        s = stats.get(name)
        if s is None:
            rows.append([name, "skipped"])
            continue
        rows.append([name, *cells(s), f"{h.ratio(s.median, stats[base].median):.2f}"])
    width = max(len(row) for row in rows)
    for row in rows:
        row.extend(["-"] * (width - len(row)))
    return rows


def print_skip_notes(stats: Dict[str, h.Stats], order: Sequence[str],
                     skipped: Dict[str, str]) -> None:
    """After a table: why each skipped case was skipped."""
    lines = [f"  {name}: skipped, {skipped.get(name, 'not installed')}"
             for name in order if name not in stats]
    if lines:
        print("\n".join(lines))
        print()


def cases_json(stats: Dict[str, h.Stats], order: Sequence[str], base: str,
               skipped: Optional[Dict[str, str]] = None,
               extra: Optional[Callable[[h.Stats], dict]] = None) -> dict:
    skipped = skipped or {}
    out = {}
    for name in order:
        s = stats.get(name)
        if s is None:
            out[name] = {"skipped": skipped.get(name, "not installed")}
            continue
        d = s.as_dict()
        d[f"ratio_over_{base.replace(' ', '_')}"] = h.ratio(s.median, stats[base].median)
        if extra is not None:
            d.update(extra(s))
        out[name] = d
    return out
