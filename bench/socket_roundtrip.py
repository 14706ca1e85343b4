"""Round-trip cost of one request to one worker process, three transports.

What is measured, in one run:

Workloads
  small   a tiny task: the request is the tuple ``(i,)``, the reply is ``i``
          (swarm) or the same tuple echoed back (Pipe); the raw socket moves
          40 opaque bytes each way. Reported as median microseconds per round
          trip.
  8 MiB   a C-contiguous float64 numpy array of 8 MiB (1,048,576 elements)
          sent to the worker, which returns it unchanged. Reported as median
          milliseconds per round trip and as GB/s counting BOTH directions
          (2 x 8,388,608 bytes per round trip; 1 GB = 1e9 bytes).

Transports (one client thread, one request outstanding at a time)
  swarm   ``swarm.client.Socket(pid).do_task([i, (payload,)])`` to a worker
          script (bench/_echo_worker.py, ``swarm.worker.run(echo)``) started
          with ``subprocess.Popen``. Includes pickling (protocol 5; arrays
          travel as out-of-band buffers) and unpickling on both sides.
  Pipe    ``multiprocessing.connection.Pipe()`` to a ``multiprocessing.Process``
          running ``conn.send(conn.recv())`` in a loop; the parent does
          ``conn.send(x); conn.recv()``. Includes pickling on both sides.
  raw     ``socket.socketpair(AF_UNIX)`` ping-pong in Python, no pickling, no
          framing: the parent ``sendall``s the bytes (for the array,
          ``memoryview(arr)``) and ``recv_into``s a preallocated bytearray
          until full; the child process does the same and sends the buffer
          back. This is the floor for a Python-driven round trip of small
          messages; for 8 MiB it is the plain-Python reference (a C loop
          over the same syscalls, as in swarm, may match or beat it).

Method
  Each transport is warmed up (its child started and a few round trips run,
  with the echoed values checked) before timing. A sample is the wall time
  of N consecutive round trips divided by N; repeats are interleaved across
  transports (rotating order) so noise hits them alike; the gc is off while
  timing; the table shows the median (and min) over the repeats. The ratio
  column is peer time / swarm time: > 1 means swarm is faster.

CPU placement matters as much as the transport on a small or busy machine:
a round trip whose two processes share a CPU costs a context switch, one
whose processes sit on different CPUs costs a cross-CPU wake-up, which is
far slower when the other CPU is busy. The default, ``--pin split``, puts
this process on one CPU and every child on another, as a pool's workers
run on other cores than its client; ``--pin same`` puts them all on one;
``--pin none`` lets the scheduler decide per process pair, so transports
may be placed unlike each other and the comparison is a lottery. When
median and min differ widely, the samples were bimodal: rerun, or pin.

The three checks printed at the end are informational: the script exits 0
whether they pass or not.

Usage: python bench/socket_roundtrip.py [--quick] [--json] [--pin {none,same,split}]
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import sys

import numpy as np

from swarm.client import Socket

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as h  # noqa: E402

WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_echo_worker.py")
SMALL_RAW_BYTES = 40
ARRAY_BYTES = 8 * 1024 * 1024
STOP_TIMEOUT_S = h.STOP_TIMEOUT_S

# (repeats, small round trips per sample, 8 MiB round trips per sample)
DEFAULT_PLAN = dict(repeats=9, small_number=2000, small_warmup=300,
                    big_number=15, big_warmup=3)
QUICK_PLAN = dict(repeats=3, small_number=200, small_warmup=50,
                  big_number=3, big_warmup=1)


# ---------------------------------------------------------------- children
# Module level, so that they also work under the spawn start method.

def _pipe_echo(conn) -> None:
    while True:
        msg = conn.recv()
        if msg is None:
            break
        conn.send(msg)
    conn.close()


def _recv_exact(sock: socket.socket, view: memoryview) -> bool:
    """Fill ``view`` from ``sock``; False if the peer closed first."""
    got, n = 0, len(view)
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return False
        got += k
    return True


def _raw_echo(sock: socket.socket, nbytes: int) -> None:
    buf = bytearray(nbytes)
    view = memoryview(buf)
    try:
        while _recv_exact(sock, view):
            sock.sendall(view)
    finally:
        sock.close()


# ---------------------------------------------------------------- transports

def start_swarm(stack: contextlib.ExitStack) -> Socket:
    proc = h.start_worker_script(stack, WORKER_SCRIPT)
    sock = Socket(proc.pid)
    stack.callback(sock.close)  # runs before stop()
    sock.connect(timeout=10)
    return sock


def start_pipe(stack: contextlib.ExitStack):
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.Process(target=_pipe_echo, args=(child,), daemon=True)
    proc.start()
    child.close()

    def stop():
        try:
            if proc.is_alive():
                parent.send(None)
        except OSError:
            pass
        parent.close()
        _stop_process(proc)

    stack.callback(stop)
    return parent


def _stop_process(proc: multiprocessing.Process) -> None:
    """Join a child that was told to stop; escalate to SIGTERM, then SIGKILL."""
    proc.join(STOP_TIMEOUT_S)
    if proc.is_alive():
        proc.terminate()
        proc.join(STOP_TIMEOUT_S)
    if proc.is_alive():
        proc.kill()
        proc.join()


def start_raw(stack: contextlib.ExitStack, nbytes: int) -> socket.socket:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = multiprocessing.Process(target=_raw_echo, args=(child, nbytes), daemon=True)
    proc.start()
    child.close()

    def stop():
        with contextlib.suppress(OSError):
            parent.shutdown(socket.SHUT_RDWR)
        parent.close()
        _stop_process(proc)

    stack.callback(stop)
    return parent


# ---------------------------------------------------------------- workloads

def small_cases(sock: Socket, conn, raw: socket.socket):
    def swarm_small(n):
        do_task = sock.do_task
        for i in range(n):
            do_task([i, (i,)])

    def pipe_small(n):
        send, recv = conn.send, conn.recv
        for i in range(n):
            send((i,))
            recv()

    msg = bytes(range(SMALL_RAW_BYTES))
    back = bytearray(SMALL_RAW_BYTES)
    back_view = memoryview(back)

    def raw_small(n):
        sendall, recv_into = raw.sendall, raw.recv_into
        for _ in range(n):
            sendall(msg)
            got = recv_into(back_view)
            while got < SMALL_RAW_BYTES:          # a stream may split; rarely does
                k = recv_into(back_view[got:])
                if k == 0:
                    raise ConnectionError("raw echo child closed")
                got += k

    # correctness, before anything is timed
    assert sock.do_task([7, (7,)]) == (7, 7)
    conn.send((7,))
    assert conn.recv() == (7,)
    raw_small(1)
    assert bytes(back) == msg
    return {"swarm": swarm_small, "Pipe": pipe_small, "raw": raw_small}


def big_cases(sock: Socket, conn, raw: socket.socket):
    arr = np.random.default_rng(0).random(ARRAY_BYTES // 8)
    assert arr.nbytes == ARRAY_BYTES and arr.flags.c_contiguous

    def swarm_big(n):
        for i in range(n):
            sock.do_task([i, (arr,)])

    def pipe_big(n):
        for _ in range(n):
            conn.send(arr)
            conn.recv()

    back = bytearray(ARRAY_BYTES)
    back_view = memoryview(back)
    arr_view = memoryview(arr)

    def raw_big(n):
        for _ in range(n):
            raw.sendall(arr_view)
            if not _recv_exact(raw, back_view):
                raise ConnectionError("raw echo child closed")

    # correctness, before anything is timed
    tid, out = sock.do_task([1, (arr,)])
    assert tid == 1 and isinstance(out, np.ndarray) and np.array_equal(out, arr)
    conn.send(arr)
    assert np.array_equal(conn.recv(), arr)
    raw_big(1)
    assert np.array_equal(np.frombuffer(back, dtype=np.float64), arr)
    return {"swarm": swarm_big, "Pipe": pipe_big, "raw": raw_big}


# ---------------------------------------------------------------- report

ORDER = ("swarm", "Pipe", "raw")


def small_rows(stats):
    base = stats["swarm"].median
    return [(name, f"{stats[name].median * 1e6:.1f}", f"{stats[name].min * 1e6:.1f}",
             f"{h.ratio(stats[name].median, base):.2f}") for name in ORDER]


def big_rows(stats):
    base = stats["swarm"].median
    rows = []
    for name in ORDER:
        s = stats[name]
        rows.append((name, f"{2 * ARRAY_BYTES / s.median / 1e9:.2f}",
                     f"{s.median * 1e3:.2f}", f"{s.min * 1e3:.2f}",
                     f"{h.ratio(s.median, base):.2f}"))
    return rows


def make_checks(small, big):
    sw, pipe, raw = (small[n].median for n in ORDER)
    bsw, bpipe = big["swarm"].median, big["Pipe"].median
    return [
        h.Check("swarm faster than Pipe on small tasks", sw < pipe,
                f"swarm {sw * 1e6:.1f} us vs Pipe {pipe * 1e6:.1f} us "
                f"(Pipe/swarm = {pipe / sw:.2f}x)"),
        h.Check("swarm within 2x of raw ping-pong on small tasks", sw <= 2 * raw,
                f"swarm {sw * 1e6:.1f} us vs raw {raw * 1e6:.1f} us "
                f"(swarm/raw = {sw / raw:.2f}x, limit 2.00x)"),
        h.Check("swarm >= 2x Pipe on 8 MiB", bpipe >= 2 * bsw,
                f"swarm {bsw * 1e3:.2f} ms vs Pipe {bpipe * 1e3:.2f} ms "
                f"(Pipe/swarm = {bpipe / bsw:.2f}x, need 2.00x)"),
    ]


def main(argv=None) -> int:
    args = h.parse_args(__doc__.splitlines()[0], argv, default_pin="split")
    plan = QUICK_PLAN if args.quick else DEFAULT_PLAN
    env = h.environment()

    placement = h.Placement(args.pin)

    with contextlib.ExitStack() as stack:
        placement.before_children()
        sock = start_swarm(stack)
        conn = start_pipe(stack)
        raw_small = start_raw(stack, SMALL_RAW_BYTES)
        raw_big = start_raw(stack, ARRAY_BYTES)
        placement.after_children()

        small = h.measure(small_cases(sock, conn, raw_small), repeats=plan["repeats"],
                          number=plan["small_number"], warmup=plan["small_warmup"])
        big = h.measure(big_cases(sock, conn, raw_big), repeats=plan["repeats"],
                        number=plan["big_number"], warmup=plan["big_warmup"])

    checks = make_checks(small, big)

    if args.json:
        h.emit_json({
            "benchmark": "socket_roundtrip",
            "environment": env,
            "plan": dict(plan, quick=args.quick, pin=args.pin),
            "placement": placement.describe(),
            "array_bytes": ARRAY_BYTES,
            "gbps_counts": "both directions (2 * array_bytes per round trip), 1 GB = 1e9 B",
            "results": {
                "small": {n: dict(small[n].as_dict(),
                                  ratio_peer_over_swarm=h.ratio(small[n].median,
                                                                small["swarm"].median))
                          for n in ORDER},
                "8MiB": {n: dict(big[n].as_dict(),
                                 gbps=2 * ARRAY_BYTES / big[n].median / 1e9,
                                 ratio_peer_over_swarm=h.ratio(big[n].median,
                                                               big["swarm"].median))
                         for n in ORDER},
            },
            "checks": [c.as_dict() for c in checks],
        })
        return 0

    h.print_header("swarm socket round trip", env, notes=[
        f"plan        {'--quick' if args.quick else 'default'}: {plan['repeats']} repeats; "
        f"{plan['small_number']} small / {plan['big_number']} 8 MiB round trips per sample; "
        f"median over repeats",
        f"pin         {placement.describe()}",
    ])
    h.print_table(
        f"small task round trip: (i,) -> i   [raw: {SMALL_RAW_BYTES} B each way]",
        ("transport", "median us/rt", "min us/rt", "peer/swarm"), small_rows(small))
    h.print_table(
        "8 MiB float64 array echo   [GB/s counts BOTH directions: 2 x 8 MiB per round trip]",
        ("transport", "GB/s", "median ms/rt", "min ms/rt", "peer/swarm"), big_rows(big))
    h.print_checks(checks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
