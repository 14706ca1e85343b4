"""The crash matrix: for a Batch, a Sprint and a `Socket(pid)`, a worker
raises, calls os._exit(3), or dies by SIGSEGV or SIGKILL at each phase of
a task's life, and each cell checks that

- the client gets a clear error for that task only: a TaskError naming the
  phase, or, where the process died, "worker died" with the signal or the
  exit code (`Socket` raises WorkerDied: it is not the worker's parent and
  cannot know how it died, so there the test checks the exit status
  itself);
- every other task's result arrives, exactly once (a Batch's and a
  Sprint's done/failed counts add up to the tasks submitted, and a Sprint
  that submits again gets only the new task ids back);
- the pool goes on serving new tasks at its size (`len(pool.pids) == 2`,
  the dead worker replaced);
- no process or socket file is left once the pool closes (the autouse
  `no_leaks` fixture; a hand-started worker that died leaves a stale
  socket file, which `Socket.connect` must see as stale and which
  `remove_stale_sockets` clears, as `Pool()` does at start).

Phases: task unpickling in the worker, inside the task, result pickling in
the worker, result unpickling in the client, inside the initializer (the
requestor's tasks fail, another requestor's do not), while idle between
tasks, and while a large (64 MiB) frame is half-written, in each
direction. Plus a task that cannot be pickled in the client and a result
whose class exists only in the worker. Pools run with max_retries=0 so a
death is reported, not retried; `test_a_death_that_happens_once_is_retried`
shows the default retry absorbing a fault that fires once.

How "half-written" is made reliable (see tests/_crash.py):

- *Task frame* (client -> worker). The faulty requestor's initializer
  arms a thread in each of its workers that polls the worker's RSS. The
  64 MiB buffer is received into a fresh mmap'ed bytearray with the GIL
  released, so RSS grows only as bytes arrive; at 4 MiB of growth the
  thread records the growth and kills the worker. The test asserts that
  the recorded growth is below 64 MiB, i.e. the frame was only partly in.
- *Result frame* (worker -> client). The task returns a 64 MiB array and
  starts a thread that polls the main thread's current system call
  (/proc/self/task/<tid>/syscall). The frame leaves in one blocking
  sendmsg, which blocks between chunks of the ~200 KiB socket buffer while
  the client drains it; seen blocked in sendmsg, the frame is started and
  unfinished, and the thread kills the worker. The test asserts the
  recorded syscall and, for a Pool, that the client saw the frame cut off.

A "raise" cannot happen mid-frame (no Python code of the task runs while
a frame moves; an exception in the watcher thread would end only that
thread), a fault in the client may only raise (anything else would end the
client, the test runner), and nothing runs in an idle worker to raise:
those cells are listed as skipped with that reason.

Two cells pin bugs the matrix found: a worker dying mid-result made
Socket.do_task raise ProtocolError instead of WorkerDied (now TruncatedFrame,
a PeerClosed too), and a write error on a dead worker skipped the replies it
had sent before dying, charging a finished task with the death
(test_a_reply_already_sent_survives_a_death_while_a_large_frame_is_half_written).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import time

import numpy as np
import pytest

import _crash
from swarm import Socket, TaskError, WorkerDied, WorkerNotFound
from swarm import _runtime
from swarm._core import sock
from swarm.client import BatchManager, Pool, Sprint

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT = os.getpid()  # faults check it, so that none fires in the test runner
N = 6                 # tasks per cell
FAULTY = 3            # the faulty task, in the middle
WORKERS = 2

KINDS = ["batch", "sprint", "socket"]
MODES = ["raise", "exit", "sigsegv", "sigkill"]
DEATHS = {"exit": f"exited with code {_crash.EXIT_CODE}", "sigsegv": "died (SIGSEGV)",
          "sigkill": "died (SIGKILL)"}
EXIT_STATUS = {"exit": _crash.EXIT_CODE, "sigsegv": -signal.SIGSEGV,
               "sigkill": -signal.SIGKILL}
PHASE_NAMES = {
    "task-unpickling": "task unpickling in the worker",
    "inside-task": "task",
    "result-pickling": "result pickling in the worker",
    "result-unpickling": "result unpickling in the client",
    "initializer": "initializer",
}
TASK_PHASES = ["task-unpickling", "inside-task", "result-pickling", "result-unpickling",
               "large-task-frame", "large-result-frame"]

SOCKET_WORKER = f"""
    import sys
    sys.path.insert(0, {HERE!r})
    from swarm.worker import run, _call, _builtin_initializer

    if __name__ == "__main__":
        run(task_processor=_call, initializer=_builtin_initializer)
"""

LARGE_FRAME_SKIP = ("a raise cannot interrupt a frame in transit: no code of the task runs "
                    "while a frame moves, and an exception in the thread that faults "
                    "mid-frame would end only that thread")
CLIENT_SKIP = ("the result is unpickled in the client: a fault there may only raise; "
               "os._exit or a signal would end the client (the test runner) itself")
IDLE_SKIP = "nothing runs in an idle worker that could raise: an idle worker can only die"


def _senseless(phase: str, mode: str):
    """Why a (phase, mode) cell makes no sense, or None."""
    if phase == "result-unpickling" and mode != "raise":
        return CLIENT_SKIP
    if phase in ("large-task-frame", "large-result-frame") and mode == "raise":
        return LARGE_FRAME_SKIP
    if phase == "idle" and mode == "raise":
        return IDLE_SKIP
    return None


def _cells(phases, kinds=KINDS, modes=MODES):
    for phase in phases:
        for kind in kinds:
            for mode in modes:
                reason = _senseless(phase, mode)
                marks = [pytest.mark.skip(reason=reason)] if reason else []
                yield pytest.param(kind, phase, mode, id=f"{kind}-{phase}-{mode}", marks=marks)


@pytest.fixture(autouse=True)
def _large_frames_travel_inline(request, monkeypatch):
    """The large-frame cells kill a worker while a 64 MiB frame is half
    written, which only the inline path has: above SHM_THRESHOLD an array
    crosses as a memfd in a frame of a few hundred bytes. These cells pin
    the inline path, at both ends (the env reaches the workers)."""
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    if params.get("phase") in ("large-task-frame", "large-result-frame"):
        monkeypatch.setenv("SWARM_SHM_THRESHOLD", "0")
        monkeypatch.setattr(sock, "SHM_THRESHOLD", 0)


# ---------------------------------------------------------------- helpers

def _squares(n=N, offset=0):
    return [(_crash.square, offset + i) for i in range(n)]


def _faulty_task(phase, mode, marker=None, record=None):
    """The task that faults in `phase`; unfaulted it returns 9 (3 * 3),
    except the large result, which is the 64 MiB array."""
    if phase == "task-unpickling":
        return (_crash.square, _crash.UnpickleFault(mode, CLIENT, marker, 3))
    if phase == "inside-task":
        return (_crash.faulty_square, mode, CLIENT, marker, 3)
    if phase == "result-pickling":
        return (_crash.square_with_faulty_pickle, mode, CLIENT, marker, 3)
    if phase == "result-unpickling":
        return (_crash.square_with_client_fault, CLIENT, 3)
    if phase == "large-task-frame":
        return (_crash.square_ignoring, _crash.large_payload(), 3)
    if phase == "large-result-frame":
        return (_crash.large_result_dying_mid_send, mode, CLIENT, marker, record)
    raise ValueError(phase)


def _init_data(phase, mode, marker=None, record=None):
    """init_data of the faulty requestor: only the large task frame needs
    one (it arms the thread that kills the worker mid-receive)."""
    if phase == "large-task-frame":
        return (_crash.arm_death_mid_receive, mode, CLIENT, marker, record)
    return None


def _run(pool, kind, tasks, init_data=None):
    """Run tasks as a Batch or a Sprint; ({task_id: result or TaskError},
    the requestor). Each task id must come back exactly once."""
    if kind == "batch":
        batch = BatchManager(pool, tasks, init_data=init_data).batch
        results = batch.list_results(return_exceptions=True, timeout=30)
        assert len(results) == len(tasks)
        return dict(enumerate(results)), batch
    sprint = pool.submit_sprint(Sprint(init_data=init_data))
    sprint.submit_tasks(tasks)
    got = list(sprint.yield_results(return_exceptions=True, timeout=30))
    assert sorted(i for i, _ in got) == list(range(len(tasks)))
    return dict(got), sprint


def _assert_counts(requestor, done, failed):
    stats = requestor.stats
    assert (stats["tasks_done"], stats["tasks_failed"], stats["tasks_left"]) == (done, failed, 0)


def _assert_others_arrived(results, faulty=FAULTY):
    assert {i: r for i, r in results.items() if i != faulty} == \
        {i: i * i for i in range(N) if i != faulty}


def _assert_pool_serves_on(pool, kind, requestor, before, dead_pid):
    """The pool is back at its size without the dead worker (or unchanged
    when nothing died), a Sprint takes more tasks and yields only them,
    and a new Batch runs."""
    pids = pool.pids
    assert len(pids) == WORKERS
    if dead_pid is None:
        assert set(pids) == before
    else:
        assert dead_pid not in pids
    if kind == "sprint" and requestor is not None:
        ids = requestor.submit_tasks(_squares(3, offset=10))
        got = list(requestor.yield_results(timeout=30))
        assert got and sorted(got) == [(i, (10 + k) ** 2) for k, i in enumerate(ids)]
    batch = BatchManager(pool, _squares(4)).batch
    assert batch.list_results(timeout=30) == [0, 1, 4, 9]


def _dead_pid(error: TaskError, how: str, during: str) -> int:
    """Check a death's message; return the dead worker's pid."""
    match = re.fullmatch(rf"worker (\d+) {re.escape(how)} {during}", str(error))
    assert match, f"unexpected message: {error}"
    return int(match.group(1))


def _assert_task_error(error, phase, task_id=FAULTY):
    assert isinstance(error, TaskError), error
    assert error.phase == PHASE_NAMES[phase]
    assert error.task_id == task_id
    assert "CrashError" in str(error) and "injected fault" in str(error)


@contextlib.contextmanager
def _dies(worker, mode):
    """The block makes a hand-started worker die. Then: it died as mode
    says and left its socket file, which a client sees as stale and
    `remove_stale_sockets` clears (cleared also when the block failed, so
    that a failure is not reported twice, as a leak too)."""
    try:
        yield
    finally:
        status = worker.proc.wait(timeout=10)
        was_left = os.path.exists(worker.socket_path)
        try:
            Socket(worker.pid).connect(timeout=1)
            refusal = None
        except WorkerNotFound as exc:
            refusal = exc
        removed = _runtime.remove_stale_sockets(os.path.dirname(worker.socket_path))
    assert status == EXIT_STATUS[mode]
    assert was_left and worker.socket_path in removed
    assert refusal is not None and "stale" in str(refusal)


def _assert_half_written(phase, record, caplog):
    if phase == "large-task-frame":
        grown = int(open(record).read())
        assert _crash.RECEIVED_BEFORE_DEATH <= grown < _crash.LARGE_BYTES, grown
    else:
        assert open(record).read().split()[0] == str(_crash.SENDMSG_SYSCALL)
        if caplog is not None:
            # Logged at INFO: a worker dying mid-frame is a death, not a
            # protocol error.
            assert "connection closed inside a frame" in caplog.text


def _skip_without_sendmsg(phase):
    if phase == "large-result-frame" and _crash.SENDMSG_SYSCALL is None:
        pytest.skip("the sendmsg syscall number of this architecture is not known")


# ---------------------------------------------------------------- the matrix

@pytest.mark.parametrize("kind,phase,mode", list(_cells(TASK_PHASES)))
def test_a_fault_in_one_task_fails_that_task_alone(kind, phase, mode, tmp_path, make_worker,
                                                   caplog):
    caplog.set_level(logging.INFO, logger="swarm")
    _skip_without_sendmsg(phase)
    record = str(tmp_path / "record")
    tasks = _squares()
    tasks[FAULTY] = _faulty_task(phase, mode, record=record)
    init_data = _init_data(phase, mode, record=record)
    if kind == "socket":
        return _socket_task_fault(make_worker, phase, mode, tasks, init_data, record)
    with Pool(workers=WORKERS, max_retries=0) as pool:
        before = set(pool.pids)
        results, requestor = _run(pool, kind, tasks, init_data)
        error = results[FAULTY]
        _assert_others_arrived(results)
        _assert_counts(requestor, N - 1, 1)
        dead_pid = None
        if mode == "raise":
            _assert_task_error(error, phase)
        else:
            assert isinstance(error, TaskError) and error.phase == "worker died"
            dead_pid = _dead_pid(error, DEATHS[mode], f"during task {FAULTY}")
            if phase.startswith("large"):
                _assert_half_written(phase, record, caplog)
        _assert_pool_serves_on(pool, kind, requestor, before, dead_pid)


def _socket_task_fault(make_worker, phase, mode, tasks, init_data, record):
    worker = make_worker(SOCKET_WORKER)
    with Socket(worker.pid) as client:
        client.connect()
        if init_data is not None:
            client.initialize(init_data)
        for i in range(FAULTY):
            assert client.do_task([i, tasks[i]], timeout=30) == (i, i * i)
        if mode == "raise":
            with pytest.raises(TaskError) as info:
                client.do_task([FAULTY, tasks[FAULTY]], timeout=30)
            _assert_task_error(info.value, phase)
            # The same connection serves the rest.
            for i in range(FAULTY + 1, N):
                assert client.do_task([i, tasks[i]], timeout=30) == (i, i * i)
            return
        with _dies(worker, mode):
            with pytest.raises(WorkerDied, match=f"worker {worker.pid} .*during task {FAULTY}"):
                client.do_task([FAULTY, tasks[FAULTY]], timeout=30)
        if phase.startswith("large"):
            _assert_half_written(phase, record, None)


@pytest.mark.parametrize("kind,phase,mode", list(_cells(["initializer"])))
def test_a_fault_in_the_initializer_fails_its_requestors_tasks_alone(kind, phase, mode,
                                                                      make_worker):
    init_data = (_crash.faulty_init, mode, CLIENT)
    if kind == "socket":
        return _socket_init_fault(make_worker, mode, init_data)
    with Pool(workers=WORKERS, max_retries=0) as pool:
        before = set(pool.pids)
        healthy = BatchManager(pool, _squares(offset=100)).batch
        if kind == "batch":
            faulty = BatchManager(pool, _squares(), init_data=init_data).batch.start()
            healthy.start()
            results = dict(enumerate(faulty.list_results(return_exceptions=True,
                                                         timeout=30)))
        else:
            faulty = pool.submit_sprint(Sprint(init_data=init_data))
            faulty.submit_tasks(_squares())
            healthy.start()
            got = list(faulty.yield_results(return_exceptions=True, timeout=30))
            assert sorted(i for i, _ in got) == list(range(N))
            results = dict(got)
        assert healthy.list_results(timeout=30) == [(100 + i) ** 2 for i in range(N)]
        _assert_counts(healthy, N, 0)
        _assert_counts(faulty, 0, N)
        dead = set()
        for task_id, error in results.items():
            assert isinstance(error, TaskError) and error.phase == "initializer"
            assert error.task_id == task_id
            assert str(error).startswith(f"task {task_id}: the initializer failed: ")
            if mode == "raise":
                assert "CrashError: injected fault: initializer" in str(error)
            else:
                cause = str(error).split(": the initializer failed: ", 1)[1]
                dead.add(_dead_pid(cause, DEATHS[mode], "in the initializer"))
        # Every worker that ran the initializer died; the pool is whole again.
        assert len(pool.pids) == WORKERS and not dead & set(pool.pids)
        _assert_pool_serves_on(pool, "batch", None, before, dead.pop() if dead else None)


def _socket_init_fault(make_worker, mode, init_data):
    worker = make_worker(SOCKET_WORKER)
    with Socket(worker.pid) as client:
        client.connect()
        assert client.do_task([0, (_crash.square, 0)]) == (0, 0)
        if mode != "raise":
            with _dies(worker, mode):
                with pytest.raises(WorkerDied,
                                   match=f"worker {worker.pid} .*during initialize"):
                    client.initialize(init_data, timeout=30)
            return
        with pytest.raises(TaskError) as info:
            client.initialize(init_data, timeout=30)
        assert info.value.phase == "initializer"
        assert "CrashError: injected fault: initializer" in str(info.value)
        # The worker refuses tasks until an initialize succeeds, then serves.
        with pytest.raises(TaskError, match="initializer failed") as refused:
            client.do_task([1, (_crash.square, 1)], timeout=30)
        assert refused.value.phase == "initializer"
        client.initialize(())
        for i in range(1, N):
            assert client.do_task([i, (_crash.square, i)], timeout=30) == (i, i * i)


@pytest.mark.parametrize("kind,phase,mode", list(_cells(["idle"])))
def test_a_worker_dying_while_idle_costs_no_task(kind, phase, mode, tmp_path, make_worker):
    trigger = tmp_path / "die-now"
    tasks = _squares()
    tasks[FAULTY] = (_crash.arm_idle_death, mode, CLIENT, str(trigger))
    if kind == "socket":
        return _socket_idle_death(make_worker, mode, tasks, trigger)
    with Pool(workers=WORKERS, max_retries=0) as pool:
        results, requestor = _run(pool, kind, tasks)
        armed = results[FAULTY]
        assert armed in pool.pids
        _assert_others_arrived(results)
        # Every result is in and nothing is queued: the worker is idle.
        trigger.touch()
        deadline = time.monotonic() + 10
        # Noticed, and replaced (for a moment in between the pool is short).
        while armed in pool.pids or len(pool.pids) < WORKERS:
            assert time.monotonic() < deadline, "the pool did not replace the dead worker"
            time.sleep(0.01)
        # The same requestor (for a Sprint) or a new one runs on, no task lost.
        if kind == "sprint":
            ids = requestor.submit_tasks(_squares())
            got = sorted(requestor.yield_results(timeout=30))
            assert got == [(i, k * k) for k, i in enumerate(ids)]
            _assert_counts(requestor, 2 * N, 0)
        else:
            _assert_counts(requestor, N, 0)
            batch = BatchManager(pool, _squares()).batch
            assert batch.list_results(timeout=30) == [i * i for i in range(N)]
            _assert_counts(batch, N, 0)
        assert len(pool.pids) == WORKERS and armed not in pool.pids


def _socket_idle_death(make_worker, mode, tasks, trigger):
    worker = make_worker(SOCKET_WORKER)
    with Socket(worker.pid) as client:
        client.connect()
        for i in range(FAULTY):
            assert client.do_task([i, tasks[i]], timeout=30) == (i, i * i)
        assert client.do_task([FAULTY, tasks[FAULTY]], timeout=30) == (FAULTY, worker.pid)
        with _dies(worker, mode):
            trigger.touch()
            worker.proc.wait(timeout=10)
            with pytest.raises(WorkerDied,
                               match=f"worker {worker.pid} .*during task {FAULTY + 1}"):
                client.do_task([FAULTY + 1, tasks[FAULTY + 1]], timeout=30)


@pytest.mark.parametrize("kind", KINDS)
def test_a_task_that_cannot_be_pickled_in_the_client_fails_alone(kind, make_worker):
    tasks = _squares()
    tasks[FAULTY] = (_crash.square, lambda: 3)
    _assert_client_side_failure(kind, tasks, "task pickling in the client", make_worker)


@pytest.mark.parametrize("kind", KINDS)
def test_a_result_whose_class_exists_only_in_the_worker_fails_alone(kind, make_worker):
    tasks = _squares()
    tasks[FAULTY] = (_crash.result_of_a_class_only_the_worker_has, 3)
    error = _assert_client_side_failure(kind, tasks, "result unpickling in the client",
                                        make_worker)
    assert error.exc_type == "ModuleNotFoundError" and "_crash_worker_only" in str(error)


def _assert_client_side_failure(kind, tasks, phase, make_worker):
    """The faulty task fails with phase, the rest arrive, no worker dies."""
    if kind == "socket":
        worker = make_worker(SOCKET_WORKER)
        with Socket(worker.pid) as client:
            client.connect()
            for i in range(N):
                if i != FAULTY:
                    assert client.do_task([i, tasks[i]], timeout=30) == (i, i * i)
                    continue
                with pytest.raises(TaskError) as info:
                    client.do_task([i, tasks[i]], timeout=30)
                error = info.value
        assert worker.proc.poll() is None
    else:
        with Pool(workers=WORKERS, max_retries=0) as pool:
            before = set(pool.pids)
            results, requestor = _run(pool, kind, tasks)
            error = results[FAULTY]
            _assert_others_arrived(results)
            _assert_counts(requestor, N - 1, 1)
            _assert_pool_serves_on(pool, kind, requestor, before, None)
    assert isinstance(error, TaskError) and error.phase == phase
    assert error.task_id == FAULTY and f"task {FAULTY}" in str(error)
    return error


# ---------------------------------------------------------------- replies in the buffer

def _hold_the_gil(seconds):
    """Keep every other thread of this process off the GIL for about
    `seconds`: one builtin call (sum over a range) runs in C and never
    offers the GIL to another thread until it returns (CPython)."""
    start = time.perf_counter()
    sum(range(1_000_000))
    per_million = max(time.perf_counter() - start, 1e-4)
    sum(range(int(seconds / per_million * 1_000_000)))


def test_a_reply_already_sent_survives_a_death_while_a_large_frame_is_half_written(
        monkeypatch):
    # The worker finishes A and sends its reply, then dies unpickling B,
    # while the pool still has C (64 MiB) half written to it. The pool's
    # I/O thread is kept off the GIL meanwhile, so it sees the death with
    # A's reply unread in the socket: that reply must still count.
    # C travels inline: as a memfd it would be a frame of a few hundred bytes.
    monkeypatch.setenv("SWARM_SHM_THRESHOLD", "0")
    monkeypatch.setattr(sock, "SHM_THRESHOLD", 0)
    with Pool(workers=1, max_retries=0) as pool:
        sprint = pool.submit_sprint(Sprint())
        sprint.submit_tasks(_squares(50))      # tiny tasks: deep pipelining from now on
        list(sprint.yield_results(timeout=30))
        a, b, c = sprint.submit_tasks([
            (_crash.sleep_then, 0.3, "A done"),
            (_crash.square, _crash.UnpickleFault("sigkill", CLIENT, None, 3)),
            (_crash.square_ignoring, _crash.large_payload(), 5),
        ])
        time.sleep(0.1)          # A, B and the start of C are sent
        _hold_the_gil(0.6)       # A replies, B dies, the pool cannot look
        got = dict(sprint.yield_results(return_exceptions=True, timeout=30))
        assert re.fullmatch(rf"worker \d+ died \(SIGKILL\) during task {b}", str(got[b]))
        assert got[c] == 25
        assert got[a] == "A done"    # actual: "worker N died (SIGKILL) during task 50"
        _assert_counts(sprint, 52, 1)


# ---------------------------------------------------------------- retries

# The way a worker dies does not change the retry path (its connection
# drops either way), so these run with SIGKILL; the matrix above covers
# os._exit and SIGSEGV.
RETRY_PHASES = ["task-unpickling", "inside-task", "result-pickling", "initializer",
                "large-task-frame", "large-result-frame"]


@pytest.mark.parametrize("kind,phase,mode", list(_cells(RETRY_PHASES, ["batch", "sprint"],
                                                        ["sigkill"])))
def test_a_death_that_happens_once_is_retried(kind, phase, mode, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="swarm")
    _skip_without_sendmsg(phase)
    marker = str(tmp_path / "fired")
    record = str(tmp_path / "record")
    tasks = _squares()
    if phase == "initializer":
        init_data = (_crash.faulty_init, mode, CLIENT, marker)
    else:
        tasks[FAULTY] = _faulty_task(phase, mode, marker, record)
        init_data = _init_data(phase, mode, marker, record)
    with Pool(workers=WORKERS) as pool:   # the default max_retries=1
        before = set(pool.pids)
        results, requestor = _run(pool, kind, tasks, init_data)
        assert os.path.exists(marker), "the fault did not fire"
        if phase == "large-result-frame":
            value = results.pop(FAULTY)
            assert isinstance(value, np.ndarray) and value.nbytes == _crash.LARGE_BYTES
            assert {i: r for i, r in results.items()} == {i: i * i for i in range(N)
                                                          if i != FAULTY}
        else:
            assert results == {i: i * i for i in range(N)}
        if phase.startswith("large"):
            _assert_half_written(phase, record, caplog)
        _assert_counts(requestor, N, 0)
        after = set(pool.pids)
        assert len(after) == WORKERS and after != before  # one replaced
        _assert_pool_serves_on(pool, kind, requestor, after, None)
