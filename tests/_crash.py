"""Fault injection for the crash matrix (tests/test_crash_matrix.py).

Every fault here is injected *inside a worker process*: the functions and
objects below are pickled by reference in the client and only fault when
they run in a process other than the client (``client_pid`` is passed in
for that check). Run in the client by mistake, they raise instead, so a
broken test can never kill the test runner. The one fault meant for the
client (``ClientFault``) only ever raises.

A fault has a mode:

- ``"raise"``: raise CrashError (an importable class, so the client can
  rebuild it);
- ``"exit"``: ``os._exit(3)``;
- ``"sigsegv"``: SIGSEGV to itself (core dumps switched off first);
- ``"sigkill"``: SIGKILL to itself.

With a ``marker`` path, a fault fires only in the first process that
creates that file (O_EXCL, so two workers racing cannot both fire): the
retry on another worker then succeeds.
"""

import os
import platform
import resource
import signal
import sys
import threading
import time
import types

import numpy as np

EXIT_CODE = 3
# A 64 MiB payload: 8 Mi float64.
LARGE_ITEMS = 8 << 20
LARGE_BYTES = LARGE_ITEMS * 8
# The receiving worker dies once this much of a large frame has arrived.
RECEIVED_BEFORE_DEATH = 4 << 20
# How long a watcher thread waits for its moment before giving up.
WATCH_S = 20.0
# sendmsg(2) by architecture, as /proc/<pid>/task/<tid>/syscall shows it.
SENDMSG_SYSCALL = {"x86_64": 46, "aarch64": 211, "riscv64": 211, "ppc64le": 341,
                   "s390x": 370}.get(platform.machine())


class CrashError(Exception):
    """The exception every "raise" fault raises."""


def _first(marker):
    """True for the one process that creates marker (always True without one)."""
    if marker is None:
        return True
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


def _die(mode):
    """End this process the way mode says (never returns)."""
    if mode == "exit":
        os._exit(EXIT_CODE)
    if mode == "sigsegv":
        # No core file: it would be slow to write and left behind.
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.kill(os.getpid(), signal.SIGSEGV)
    elif mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    else:
        raise ValueError(f"not a way to die: {mode!r}")
    time.sleep(60)  # the signal is on its way
    os._exit(99)


def _fault(mode, client_pid, marker, where):
    """Fault as mode says, in a worker; no-op if marker exists already."""
    if os.getpid() == client_pid:
        raise AssertionError(f"a fault meant for the worker ({where}) ran in the client")
    if not _first(marker):
        return
    if mode == "raise":
        raise CrashError(f"injected fault: {where}")
    _die(mode)


def _identity(value):
    return value


def square(x):
    return x * x


def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


# ------------------------------------------------------------ task phases

class UnpickleFault:
    """Pickles as a call that faults when the worker unpickles the task,
    and (when it does not fault) unpickles as ``value``."""

    def __init__(self, mode, client_pid, marker=None, value=None):
        self.args = (mode, client_pid, marker, value)

    def __reduce__(self):
        return _unpickle_fault, self.args


def _unpickle_fault(mode, client_pid, marker, value):
    _fault(mode, client_pid, marker, "task unpickling in the worker")
    return value


def faulty_square(mode, client_pid, marker, x):
    """A task that faults inside itself, else returns x * x."""
    _fault(mode, client_pid, marker, "inside the task")
    return x * x


class PickleFault:
    """A result whose pickling (in the worker) faults; else it arrives as value."""

    def __init__(self, mode, client_pid, marker, value):
        self.args = (mode, client_pid, marker, value)

    def __reduce__(self):
        mode, client_pid, marker, value = self.args
        _fault(mode, client_pid, marker, "result pickling in the worker")
        return _identity, (value,)


def square_with_faulty_pickle(mode, client_pid, marker, x):
    return PickleFault(mode, client_pid, marker, x * x)


class ClientFault:
    """A result that unpickles as value in any process but the client,
    where unpickling raises CrashError. Raising is the only fault it has:
    anything else would take the client (the test runner) down."""

    def __init__(self, client_pid, value):
        self.args = (client_pid, value)

    def __reduce__(self):
        return _client_unpickle_fault, self.args


def _client_unpickle_fault(client_pid, value):
    if os.getpid() == client_pid:
        raise CrashError("injected fault: result unpickling in the client")
    return value


def square_with_client_fault(client_pid, x):
    return ClientFault(client_pid, x * x)


def faulty_init(mode, client_pid, marker=None):
    """Initializer (built-in worker: init_data = (faulty_init, *args))."""
    _fault(mode, client_pid, marker, "initializer")


def result_of_a_class_only_the_worker_has(x):
    """Return an instance of a class defined in a module that exists in
    this worker only: the client cannot unpickle it."""
    name = "_crash_worker_only"
    module = sys.modules.get(name)
    if module is None:
        module = types.ModuleType(name)
        exec("class OnlyInTheWorker:\n    pass\n", module.__dict__)
        sys.modules[name] = module
    return module.OnlyInTheWorker()


# ------------------------------------------------------------ idle

def arm_idle_death(mode, client_pid, trigger):
    """Return this worker's pid; a thread ends the worker as mode says once
    the client creates the file trigger (so the death comes while the
    worker is idle: the client only creates it once every result is in)."""
    if os.getpid() == client_pid:
        raise AssertionError("arm_idle_death ran in the client")

    def wait_and_die():
        deadline = time.monotonic() + WATCH_S
        while not os.path.exists(trigger):
            if time.monotonic() > deadline:
                return
            time.sleep(0.005)
        _die(mode)

    threading.Thread(target=wait_and_die, daemon=True).start()
    return os.getpid()


# ------------------------------------------------------------ large frames

def large_payload():
    return np.ones(LARGE_ITEMS)


def square_ignoring(payload, x):
    """A task carrying a large payload it does not use."""
    return x * x


def _rss():
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def arm_death_mid_receive(mode, client_pid, marker, record):
    """Initializer: a thread ends this worker while a large frame is half
    received.

    A frame's out-of-band buffer is received straight into a fresh
    bytearray (allocated with mmap, so its pages count towards RSS only as
    the bytes land in them); the worker reads it with the GIL released.
    The thread polls RSS; once RECEIVED_BEFORE_DEATH bytes more are
    resident than when it was armed, the frame is partly in, and it writes
    the growth it saw to record, then dies as mode says.
    """
    if os.getpid() == client_pid:
        raise AssertionError("arm_death_mid_receive ran in the client")
    baseline = _rss()

    def watch():
        deadline = time.monotonic() + WATCH_S
        while time.monotonic() < deadline:
            grown = _rss() - baseline
            if grown >= RECEIVED_BEFORE_DEATH:
                if not _first(marker):
                    return
                with open(record, "w") as f:
                    f.write(str(grown))
                _die(mode)
            time.sleep(0.0002)

    threading.Thread(target=watch, daemon=True).start()


def large_result_dying_mid_send(mode, client_pid, marker, record):
    """Return a 64 MiB array; a thread ends this worker while the result
    frame is half sent.

    The worker sends a frame in one blocking sendmsg (GIL released) from
    the array's own memory; a 64 MiB frame is far larger than the socket
    buffer, so sendmsg blocks between chunks until the client drains them.
    The thread polls the main thread's current system call
    (/proc/self/task/<tid>/syscall); seeing it blocked in sendmsg means
    the frame has started and not finished. It writes that line to record,
    then dies as mode says. With a marker that exists (a retry), the
    result is sent whole.
    """
    if os.getpid() == client_pid:
        raise AssertionError("large_result_dying_mid_send ran in the client")
    result = large_payload()
    if not _first(marker):
        return result
    path = f"/proc/self/task/{threading.main_thread().native_id}/syscall"
    wanted = str(SENDMSG_SYSCALL)

    def watch():
        deadline = time.monotonic() + WATCH_S
        while time.monotonic() < deadline:
            with open(path) as f:
                line = f.read()
            if line.split(" ", 1)[0] == wanted:
                with open(record, "w") as f:
                    f.write(line)
                _die(mode)
            time.sleep(0)

    threading.Thread(target=watch, daemon=True).start()
    return result
