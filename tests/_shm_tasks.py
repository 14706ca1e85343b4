"""Task functions for the shared-memory tests, run by the built-in worker
(tests/ is on its sys.path) and by tests/test_shm.py's worker script."""

import os

import swarm

_held = []


def memfd_report():
    """(memfd fds open, memfd mappings) of this process, as /proc says."""
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:"):
                fds.append(int(fd))
        except OSError:
            pass  # the fd listdir itself used
    with open("/proc/self/maps") as f:
        maps = [line for line in f if "/memfd:swarm" in line]
    return fds, maps


def is_shared(x):
    return swarm.shm.is_shared(x)


def fill(array, value):
    """Write into the array received (shared memory: the caller sees it)."""
    array[...] = value
    return None


def scale(array, factor):
    return array * factor


def echo(x):
    return x


def zeros(n, value):
    """A result made in shared memory: it goes back without a copy."""
    out = swarm.zeros(n)
    out[:] = value
    return out


def hold(x):
    """Keep x alive in this worker after the task (see release)."""
    _held.append(x)
    return len(_held)


def release():
    _held.clear()
    return memfd_report()


def total(array):
    """A float: nothing of the array goes back."""
    return float(array.sum())


def total_dying_once(marker, array):
    """The first call (no marker file yet) ends the worker mid-task, holding
    the array; the retry returns its sum."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    return float(array.sum())
