"""Shared helpers for the scripts in bench/.

- ``parse_args``: the common ``--quick`` / ``--json`` / ``--pin`` flags (and
  a script's own, through ``configure``); ``pick_plan``: the plan those flags
  (``--quick``, ``--watchdog``) select;
  ``Placement`` applies ``--pin`` (CPU affinity of this process and its
  children).
- ``measure``: median-of-repeats timing. Every case is warmed up first; the
  repeats are interleaved across cases (repeat r runs all cases, in an order
  rotated by r) so that machine noise hits every case alike; the garbage
  collector is off while a case is timed (as in ``timeit``).
- ``environment`` / ``print_header``: Python, numpy, swarm versions, CPU count.
- ``print_table``: a plain-text table; ``ratio`` for the "peer / swarm" column.
- ``Check`` / ``print_checks``: informational PASS/FAIL lines (never an exit
  status); SKIP when a peer the check needs did not run.
- ``emit_json``: the machine-readable form of a run.
- ``descendants`` / ``start_watchdog``: a hung run dumps its stacks, kills
  this process's descendant processes (pool workers) and exits 3.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

__all__ = ["Stats", "Check", "Placement", "parse_args", "pick_plan", "measure", "environment",
           "print_header", "print_table", "ratio", "print_checks", "emit_json", "package_version",
           "descendants", "start_watchdog"]


def parse_args(description: str, argv: Optional[Sequence[str]] = None,
               configure: Optional[Callable[[argparse.ArgumentParser], None]] = None,
               default_pin: str = "none") -> argparse.Namespace:
    """Parse the common flags; ``configure(parser)``, if given, adds a
    script's own flags first."""
    parser = argparse.ArgumentParser(description=description)
    if configure is not None:
        configure(parser)
    parser.add_argument("--quick", action="store_true",
                        help="few repeats and iterations: a smoke run of a few seconds (CI)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout instead of the tables")
    parser.add_argument("--pin", choices=("none", "same", "split"), default=default_pin,
                        help="CPU placement (Linux): none = leave it to the scheduler; "
                             "same = this process and every child on one CPU; "
                             "split = this process on one CPU, the children on another "
                             f"(default: {default_pin})")
    return parser.parse_args(argv)


def pick_plan(args: argparse.Namespace, default_plan: dict, quick_plan: dict) -> dict:
    """A copy of ``quick_plan`` with ``--quick``, else of ``default_plan``;
    ``--watchdog`` (for a script that has the flag), when given, replaces
    its ``watchdog_s``."""
    plan = dict(quick_plan if args.quick else default_plan)
    if getattr(args, "watchdog", None) is not None:
        plan["watchdog_s"] = args.watchdog
    return plan


class Placement:
    """Pins this process and the children it starts, per ``--pin``.

    Call ``before_children()`` before starting children (they inherit the
    affinity) and ``after_children()`` once they are all started.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.parent_cpus = self.child_cpus = None
        if mode == "none":
            return
        if not hasattr(os, "sched_setaffinity"):
            raise SystemExit(f"--pin {mode}: CPU affinity is not supported on this platform")
        cpus = sorted(os.sched_getaffinity(0))
        if mode == "same":
            self.parent_cpus = self.child_cpus = {cpus[0]}
        else:
            if len(cpus) < 2:
                raise SystemExit("--pin split needs at least 2 usable CPUs")
            self.parent_cpus, self.child_cpus = {cpus[0]}, {cpus[1]}

    def before_children(self) -> None:
        if self.child_cpus is not None:
            os.sched_setaffinity(0, self.child_cpus)

    def after_children(self) -> None:
        if self.parent_cpus is not None:
            os.sched_setaffinity(0, self.parent_cpus)

    def describe(self) -> str:
        if self.mode == "none":
            return "none (scheduler's choice; client and worker may share a CPU or not)"
        return (f"{self.mode}: this process on CPU {sorted(self.parent_cpus)}, "
                f"children on CPU {sorted(self.child_cpus)}")


@dataclass
class Stats:
    """Per-operation times (seconds) of one case, one sample per repeat."""

    samples: List[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    def as_dict(self) -> dict:
        return {"median_s": self.median, "min_s": self.min, "max_s": self.max,
                "samples_s": list(self.samples)}


def measure(cases: Dict[str, Callable[[int], Any]], *, repeats: int, number: int,
            warmup: int, check: Optional[Callable[[str, int, Any], None]] = None
            ) -> Dict[str, Stats]:
    """Time ``fn(number)`` for each case ``repeats`` times.

    ``fn(n)`` must perform ``n`` operations; each sample is the time of one
    call divided by ``number`` (seconds per operation). Each case first runs
    ``fn(warmup)`` untimed. If given, ``check(name, n, value)`` is called
    with what every call (warm-up included) returned, after the clock has
    stopped; it should raise if the value is wrong.
    """
    for name, fn in cases.items():
        value = fn(warmup)
        if check is not None:
            check(name, warmup, value)
        del value
    names = list(cases)
    stats = {name: Stats() for name in names}
    gc_was_enabled = gc.isenabled()
    try:
        for r in range(repeats):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                fn = cases[name]
                gc.collect()
                gc.disable()
                t0 = time.perf_counter()
                value = fn(number)
                elapsed = time.perf_counter() - t0
                if gc_was_enabled:
                    gc.enable()
                stats[name].samples.append(elapsed / number)
                if check is not None:
                    check(name, number, value)
                del value
    finally:
        if gc_was_enabled:
            gc.enable()
    return stats


def _version(module_name: str) -> str:
    try:
        module = __import__(module_name)
    except ImportError:
        return "not installed"
    version = getattr(module, "__version__", None)
    if version is None:
        try:
            from importlib.metadata import version as dist_version
            version = dist_version(module_name)
        except Exception:
            version = "unknown"
    return version


def package_version(module_name: str) -> str:
    """A module's version, or "not installed"."""
    return _version(module_name)


def environment() -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_executable": sys.executable,
        "numpy": _version("numpy"),
        "swarm": _version("swarm"),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "platform": platform.platform(),
        "machine": platform.machine(),
    }


def print_header(title: str, env: dict, notes: Sequence[str] = ()) -> None:
    print(title)
    print("=" * len(title))
    print(f"python      {env['python']} ({env['python_executable']})")
    print(f"numpy       {env['numpy']}")
    print(f"swarm       {env['swarm']}")
    cpus = f"{env['cpu_count']}"
    if env.get("cpus_usable") not in (None, env["cpu_count"]):
        cpus += f" ({env['cpus_usable']} usable by this process)"
    print(f"cpu_count   {cpus}")
    print(f"platform    {env['platform']}")
    for note in notes:
        print(note)
    print()


def ratio(peer: float, base: float) -> float:
    """``peer / base`` in time: > 1 means the base (swarm) is faster."""
    return peer / base if base > 0 else float("inf")


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print a table; the first column is left-aligned, the others right-aligned."""
    widths = [max(len(str(h)), *(len(str(row[i])) for row in rows))
              for i, h in enumerate(headers)]

    def line(cells):
        out = []
        for i, (cell, width) in enumerate(zip(cells, widths)):
            out.append(str(cell).ljust(width) if i == 0 else str(cell).rjust(width))
        return "  ".join(out).rstrip()

    print(title)
    print(line(headers))
    print(line("-" * w for w in widths))
    for row in rows:
        print(line(row))
    print()


@dataclass
class Check:
    name: str
    passed: Optional[bool]    # None: not checked (a peer it needs was skipped)
    detail: str

    def as_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


def print_checks(checks: Sequence[Check]) -> None:
    print("Checks (informational; the exit status does not depend on them)")
    width = max(len(c.name) for c in checks)
    for c in checks:
        mark = "SKIP" if c.passed is None else "PASS" if c.passed else "FAIL"
        print(f"  [{mark}] {c.name.ljust(width)}  {c.detail}")


def emit_json(document: dict) -> None:
    json.dump(document, sys.stdout, indent=2)
    sys.stdout.write("\n")


def descendants(pid: int) -> List[int]:
    """Pids of every descendant of ``pid`` (Linux /proc), children first."""
    out: List[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


def start_watchdog(seconds: float, label: str) -> threading.Event:
    """After ``seconds`` without ``done.set()`` on the returned event: dump
    every thread's stack, SIGTERM then SIGKILL this process's descendants
    (the pools' workers; SIGTERM lets swarm workers remove their socket
    files), exit 3. ``seconds <= 0``: never."""
    done = threading.Event()
    if seconds <= 0:
        return done

    def watch():
        if done.wait(seconds):
            return
        sys.stderr.write(f"\n{label}: watchdog: no end after {seconds:g} s; stacks:\n")
        faulthandler.dump_traceback(all_threads=True)
        pids = descendants(os.getpid())
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
            time.sleep(1.0)
        sys.stderr.flush()
        os._exit(3)

    threading.Thread(target=watch, name="watchdog", daemon=True).start()
    return done


# Seconds a worker script gets to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT_S = 5.0


def start_worker_script(stack: contextlib.ExitStack, script: str,
                        env: Optional[dict] = None) -> subprocess.Popen:
    """Start a worker script; ``stack`` stops it (SIGTERM, then SIGKILL)."""
    proc = subprocess.Popen([sys.executable, script], env=env)

    def stop():
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()

    stack.callback(stop)
    return proc
