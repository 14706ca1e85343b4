"""``concurrent.futures.Executor`` backed by a swarm Pool.

>>> with Pool() as pool, pool.executor() as executor:      # doctest: +SKIP
...     future = executor.submit(pow, 2, 10)
...     assert future.result() == 1024
...     assert list(executor.map(abs, [-1, -2], chunksize=2)) == [1, 2]

The executor is one requestor on the pool (its tasks share the common
queue with Sprints and Batches). A future is resolved on the pool's I/O
thread, so done-callbacks run there: keep them short, as with
ProcessPoolExecutor's management thread. ``cancel()`` succeeds while a task
is still queued; a cancelled task is never sent to a worker.

Needs the built-in worker (``Pool()`` without a script): a task is a call.
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import threading
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, TYPE_CHECKING

from swarm.client import _CLOSED, _Failure, _Requestor
from swarm.errors import PoolClosed

if TYPE_CHECKING:
    from swarm.client import Pool

__all__ = ["SwarmExecutor"]


class _FutureSink:
    """Stands where a requestor's result queue would: the pool's I/O thread
    puts (index, value) here, and the matching future is resolved."""

    def __init__(self) -> None:
        self.futures: Dict[int, concurrent.futures.Future] = {}
        self.lock = threading.Lock()

    def put(self, item: Any) -> None:
        if item is _CLOSED:
            with self.lock:
                futures, self.futures = self.futures, {}
            error = PoolClosed("the pool was closed before this task finished")
            for future in futures.values():
                if future.running() or (not future.done()
                                        and future.set_running_or_notify_cancel()):
                    future.set_exception(error)
            return
        index, value = item
        with self.lock:
            future = self.futures.pop(index, None)
        if future is None or future.cancelled():
            return
        if future.running() or future.set_running_or_notify_cancel():
            if type(value) is _Failure:
                future.set_exception(value.error)
            else:
                future.set_result(value)


class _ExecutorRequestor(_Requestor):
    def __init__(self) -> None:
        super().__init__(None, None, None)
        self._results = _FutureSink()  # type: ignore[assignment]
        self._on_dispatch = self._mark_running
        self._solo = True  # each future is marked running as its task leaves

    def _mark_running(self, index: int) -> bool:
        """False if the task's future was cancelled while it was queued."""
        future = self._results.futures.get(index)  # type: ignore[attr-defined]
        if future is None:
            return False
        if future.set_running_or_notify_cancel():
            return True
        with self._results.lock:  # type: ignore[attr-defined]
            self._results.futures.pop(index, None)  # type: ignore[attr-defined]
        return False


def _run_chunk(fn: Callable[..., Any], chunk: Iterable[tuple]) -> list:
    return [fn(*args) for args in chunk]


class SwarmExecutor(concurrent.futures.Executor):
    """A concurrent.futures Executor whose calls run on a swarm Pool.

    Parameters
    ----------
    pool
        A Pool running the built-in worker.
    own_pool
        Close the pool on ``shutdown()`` (as ``swarm.client.Pool.executor``
        does not, and a standalone executor would).
    """

    def __init__(self, pool: "Pool", *, own_pool: bool = False) -> None:
        if pool.script is not None:
            raise ValueError("an executor needs the built-in worker: use Pool() "
                             "without a script")
        self._pool = pool
        self._own_pool = own_pool
        self._requestor = _ExecutorRequestor()
        self._shutdown = False
        self._lock = threading.Lock()
        with self._lock:
            pool._attach_requestor(self._requestor)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Schedule ``fn(*args, **kwargs)``; return a Future for its result."""
        if not callable(fn):
            raise TypeError(f"submit takes a callable, got {fn!r}")
        task = (functools.partial(fn, **kwargs), *args) if kwargs else (fn, *args)
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            requestor = self._requestor
            index = requestor._submitted
            requestor._submitted += 1
            sink = requestor._results
            with sink.lock:  # type: ignore[attr-defined]
                sink.futures[index] = future  # type: ignore[attr-defined]
            self._pool._post(("tasks", requestor, index, [task]))
        return future

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any],
            timeout: Optional[float] = None, chunksize: int = 1) -> Iterator[Any]:
        """Like ``Executor.map``; ``chunksize`` > 1 sends that many calls per task."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        chunks = iter(functools.partial(_take, zip(*iterables), chunksize), [])
        results = super().map(functools.partial(_run_chunk, fn), chunks, timeout=timeout)
        return itertools.chain.from_iterable(results)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new futures; optionally cancel queued ones; optionally wait."""
        with self._lock:
            self._shutdown = True
        sink = self._requestor._results
        with sink.lock:  # type: ignore[attr-defined]
            futures = list(sink.futures.values())  # type: ignore[attr-defined]
        if cancel_futures:
            for future in futures:
                future.cancel()
        if wait:
            concurrent.futures.wait(futures)
        if self._own_pool:
            self._pool.close()


def _take(iterator: Iterator[tuple], n: int) -> list:
    return list(itertools.islice(iterator, n))
