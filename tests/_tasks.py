"""Task functions for the built-in worker: importable by reference, so the
worker process can unpickle them (tests/ is on the worker's sys.path)."""

import os
import signal
import time

_state = {"init": None, "init_calls": 0}


def square(x):
    return x * x


def noop(*args):
    return None


def echo(x):
    return x


def whoami(x=None):
    """(pid, x): which worker ran the task."""
    return os.getpid(), x


def set_init(value):
    """Initializer: remember value (the requestor's init_data)."""
    _state["init"] = value
    _state["init_calls"] += 1


def with_init(x):
    """(init value held when the task ran, x, pid)."""
    return _state["init"], x, os.getpid()


def failing_init(value):
    raise RuntimeError(f"cannot initialize with {value!r}")


def fail_if(x, bad):
    if x in bad:
        raise ValueError(f"task {x} is bad")
    return x


def sleep_then(seconds, value=None):
    time.sleep(seconds)
    return value


def die(code_or_signal="kill"):
    if code_or_signal == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(code_or_signal)


def die_once(marker_path, value):
    """Kill this worker the first time (marker absent), succeed on retry."""
    if not os.path.exists(marker_path):
        open(marker_path, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return value


def return_exception(x):
    return ValueError(f"returned, not raised: {x}")


def spin(seconds):
    """CPU-bound: burn one core for about `seconds`."""
    end = time.process_time() + seconds
    n = 0
    while time.process_time() < end:
        n += 1
    return n


def spawn_helper_then_die(seconds):
    """Start a process that inherits stderr and outlives this worker, then die."""
    import subprocess
    subprocess.Popen(["sleep", str(seconds)], stdout=subprocess.DEVNULL)
    os._exit(5)


def return_lambda():
    """A result that cannot be pickled."""
    return lambda: None


def append_line(path, text="x"):
    """A side effect per call: one line appended to path."""
    with open(path, "a") as f:
        f.write(text + "\n")
    return text


def with_init_calls(x):
    """(init value held, x, pid, initializer calls in this process so far)."""
    return _state["init"], x, os.getpid(), _state["init_calls"]


def init_once_then_fail(folder):
    """Initializer: the first worker succeeds; any later one fails, after a
    pause, and leaves a mark saying so."""
    try:
        os.close(os.open(os.path.join(folder, "winner"), os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        time.sleep(0.5)
        open(os.path.join(folder, "init-failed"), "w").close()
        raise RuntimeError("no GPU here")


def die_after_init_failed(folder, x, victim):
    """x, except for x == victim: wait until another worker's initializer
    failed, then end this worker."""
    if x == victim:
        while not os.path.exists(os.path.join(folder, "init-failed")):
            time.sleep(0.01)
        time.sleep(0.3)
        os._exit(3)
    return x


def growing_result(i, small_until):
    """Small results first, then 1 MiB ones."""
    return b"x" * (1000 if i < small_until else 1 << 20)
