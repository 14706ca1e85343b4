"""Cost of moving a numpy array to a worker: inline vs lent copy vs shared.

What is measured, in one run (one client thread, one request outstanding):

Paths (``swarm.client.Socket(pid).do_task`` to a worker script,
bench/_shm_worker.py, started with ``subprocess.Popen``)
  inline  both ends built with ``shm_threshold = 0``: the array is gathered
          into the socket write from its own memory and received into a
          fresh bytearray (two copies: into the kernel and out of it).
  lent    both ends with ``shm_threshold = 1``: the client copies the array
          once into a Lent (a memfd of its own, mapped and recycled: see
          swarm/_core/shm.pyx) and passes the fd (SCM_RIGHTS); the worker
          maps it (MAP_POPULATE), unmaps it when done, and releases it. After
          the warm-up the copies land in pages already faulted in.
  shared  the array is a ``swarm.empty`` array: its fd is passed, nothing is
          copied; the worker maps it.

Workloads
  echo 8 MiB  a C-contiguous float64 array of 8 MiB sent to the worker,
              which returns it. For lent and shared, the worker's result is
              the array it received, i.e. already in shared memory: it goes
              back by fd, without a copy. Median ms per round trip.
  one-way S   an array of S bytes (uint8) sent to the worker, which returns
              None: the cost of one direction, for picking the threshold
              (the smallest S from which lent beats inline). Median us per
              round trip, and the ratio inline / lent (> 1: lent faster).

Method
  Each worker is warmed up before timing; a sample is the wall time of N
  round trips / N; repeats are interleaved across paths (bench/_harness.py)
  with the gc off; the tables show the median (and min) over the repeats.
  The threshold line at the end names the smallest size from which lent
  stayed faster than inline at every larger size measured.

Usage: python bench/shm_threshold.py [--quick] [--json] [--pin {none,same,split}]
"""

from __future__ import annotations

import contextlib
import os
import sys

import numpy as np

import swarm
from swarm._core import sock as _sock
from swarm.client import Socket

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as h  # noqa: E402

WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_shm_worker.py")
ECHO_BYTES = 8 * 1024 * 1024
SIZES = [16 << 10, 64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20,
         4 << 20, 8 << 20, 16 << 20, 32 << 20, 64 << 20]

DEFAULT_PLAN = dict(repeats=9, echo_number=20, warmup=3, oneway_bytes=64 << 20)
QUICK_PLAN = dict(repeats=3, echo_number=3, warmup=1, oneway_bytes=8 << 20)


def start_worker(stack: contextlib.ExitStack, threshold: int) -> Socket:
    """A worker and a client Socket, both ends with shm_threshold = threshold."""
    env = dict(os.environ, SWARM_SHM_THRESHOLD=str(threshold))
    proc = h.start_worker_script(stack, WORKER_SCRIPT, env)
    sock = Socket(proc.pid)
    stack.callback(sock.close)  # runs before stop()
    # The client's Channel takes the module default when it is made.
    saved = _sock.SHM_THRESHOLD
    _sock.SHM_THRESHOLD = threshold
    try:
        sock.connect(timeout=10)
    finally:
        _sock.SHM_THRESHOLD = saved
    return sock


def _round_trips(sock: Socket, op: str, payload):
    def run(n):
        do_task = sock.do_task
        out = None
        for i in range(n):
            out = do_task([i, (op, payload)])[1]
        return out
    return run


def main(argv=None) -> int:
    args = h.parse_args(__doc__.splitlines()[0], argv, default_pin="split")
    plan = QUICK_PLAN if args.quick else DEFAULT_PLAN
    placement = h.Placement(args.pin)
    env = h.environment()
    with contextlib.ExitStack() as stack:
        placement.before_children()
        inline = start_worker(stack, 0)
        lent = start_worker(stack, 1)
        placement.after_children()

        plain = np.arange(ECHO_BYTES // 8, dtype=np.float64)
        shared = swarm.empty(plain.shape, plain.dtype)
        shared[:] = plain
        echo_cases = {"inline": _round_trips(inline, "echo", plain),
                      "lent": _round_trips(lent, "echo", plain),
                      "shared": _round_trips(lent, "echo", shared)}

        def check(name, n, value):
            if n and not np.array_equal(value, plain):
                raise AssertionError(f"{name}: echo came back different")

        echo = h.measure(echo_cases, repeats=plan["repeats"], number=plan["echo_number"],
                         warmup=plan["warmup"], check=check)

        oneway = {}
        for size in SIZES:
            a = np.ones(size, dtype=np.uint8)
            s = swarm.empty(size, dtype=np.uint8)
            number = max(3, min(2000, plan["oneway_bytes"] // size))
            oneway[size] = h.measure({"inline": _round_trips(inline, "sink", a),
                                      "lent": _round_trips(lent, "sink", a),
                                      "shared": _round_trips(lent, "sink", s)},
                                     repeats=plan["repeats"], number=number,
                                     warmup=plan["warmup"])
            del s

    # The smallest size from which lent beats inline at every larger size.
    threshold = None
    for size in reversed(SIZES):
        if oneway[size]["lent"].median < oneway[size]["inline"].median:
            threshold = size
        else:
            break

    if args.json:
        h.emit_json({"environment": env, "plan": dict(plan, quick=args.quick, pin=args.pin),
                     "echo_8mib": {k: v.as_dict() for k, v in echo.items()},
                     "oneway": {str(size): {k: v.as_dict() for k, v in cases.items()}
                                for size, cases in oneway.items()},
                     "threshold_bytes": threshold})
        return 0
    h.print_header("swarm: numpy arrays inline vs as shared memory", env,
                   [f"placement   {placement.describe()}",
                    f"default     SHM_THRESHOLD = {_sock.SHM_THRESHOLD} bytes"])
    h.print_table("echo of an 8 MiB float64 array (ms per round trip)",
                  ["path", "median", "min", "GB/s (both ways)", "inline / path"],
                  [[name, f"{st.median * 1e3:.3f}", f"{st.min * 1e3:.3f}",
                    f"{2 * ECHO_BYTES / st.median / 1e9:.2f}",
                    f"{h.ratio(echo['inline'].median, st.median):.2f}"]
                   for name, st in echo.items()])
    h.print_table("one way: S bytes to the worker, None back (us per round trip, median (min))",
                  ["S", "inline", "lent", "shared", "inline / lent"],
                  [[f"{size >> 10} KiB",
                    *(f"{cases[k].median * 1e6:.0f} ({cases[k].min * 1e6:.0f})"
                      for k in ("inline", "lent", "shared")),
                    f"{h.ratio(cases['inline'].median, cases['lent'].median):.2f}"]
                   for size, cases in oneway.items()])
    print(f"lent beats inline from {threshold >> 10} KiB up" if threshold
          else "lent never beat inline at the largest size measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
