"""swarm._core.runner.run_chunk: the worker's loop over a chunk's tasks."""

import array
import math
import mmap
import threading
import time

import pytest

from swarm._core.runner import run_chunk


class Stop(BaseException):
    pass


def _body(exc):
    return f"{type(exc).__name__}: {exc}"


def _page():
    page = mmap.mmap(-1, 16)
    return page, memoryview(page).cast("q")


def test_builtin_tasks_are_callable_and_arguments():
    results, errors = run_chunk([(math.sqrt, 4.0), (max, 1, 5, 3), (dict,)], None, True,
                                None, _body, Stop)
    assert results == [2.0, 5, {}] and errors is None


def test_a_task_processor_gets_the_tuple_spread_or_the_object_itself():
    seen = []

    def fn(*args):
        seen.append(args)
        return len(args)

    results, errors = run_chunk([(1, 2), "x", ()], fn, False, None, _body, Stop)
    assert results == [2, 1, 0] and seen == [(1, 2), ("x",), ()] and errors is None


def test_errors_are_per_task_and_the_others_still_run():
    results, errors = run_chunk([(int, "7"), (int, "x"), (abs, -3)], None, True,
                                None, _body, Stop)
    assert results == [7, None, 3]
    assert list(errors) == [1] and errors[1].startswith("ValueError")


def test_a_stop_exception_is_not_caught():
    def stop():
        raise Stop()

    with pytest.raises(Stop):
        run_chunk([(abs, 1), (stop,), (abs, 2)], None, True, None, _body, (Stop, KeyboardInterrupt))


def test_the_progress_page_names_the_running_task_then_the_end():
    page, progress = _page()
    seen = []
    tasks = [(lambda: seen.append(progress[1]),) for _ in range(3)]
    run_chunk(tasks, None, True, progress, _body, Stop)
    assert seen == [0, 1, 2] and progress[1] == 3
    progress.release()
    page.close()


def test_the_progress_page_must_hold_two_values():
    with pytest.raises(ValueError, match="two int64"):
        run_chunk([], None, True, memoryview(array.array("q", [0])), _body, Stop)


def test_other_threads_run_during_a_long_chunk_of_c_function_tasks():
    # The Python loop it replaced dropped the GIL every switch interval (the
    # eval breaker at each iteration). run_chunk only calls
    # PyErr_CheckSignals: with C-function tasks no bytecode runs, so no
    # other thread of the worker (the parent watchdog, a task's own
    # threads) gets the GIL until the chunk ends.
    task = (math.factorial, 20000)
    t = time.perf_counter()
    run_chunk([task] * 5, None, True, None, str, (KeyboardInterrupt,))
    per_task = (time.perf_counter() - t) / 5
    tasks = [task] * max(20, int(0.6 / per_task))
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            time.sleep(0.005)
            ticks.append(time.perf_counter())

    th = threading.Thread(target=ticker, daemon=True)
    th.start()
    time.sleep(0.05)
    t = time.perf_counter()
    run_chunk(tasks, None, True, None, str, (KeyboardInterrupt,))
    elapsed = time.perf_counter() - t
    stop.set()
    th.join()
    during = sum(1 for x in ticks if t < x < t + elapsed)
    # A fair share would be one tick per ~10 ms (sleep + switch interval).
    assert during >= elapsed / 0.05, \
        f"a thread ran {during} times during a {elapsed:.2f} s chunk of C-function tasks"
