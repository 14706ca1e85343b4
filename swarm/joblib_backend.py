"""A joblib parallel backend that runs ``joblib.Parallel`` on a swarm Pool.

>>> from swarm.joblib_backend import register             # doctest: +SKIP
>>> register()                                   # as backend "swarm"
>>> with joblib.parallel_config(backend="swarm", n_jobs=4):
...     results = joblib.Parallel()(joblib.delayed(f)(x) for x in data)

joblib is optional; importing this module needs it. Each ``Parallel`` call
gets a pool of ``n_jobs`` workers (closed when the call ends), unless the
backend is given a pool of its own: ``register(pool=my_pool)`` shares that
pool, which then stays open. A task that raises re-raises its original
exception, as with joblib's own backends, chained to swarm's TaskError
(which holds the remote traceback).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

from joblib.parallel import ParallelBackendBase, register_parallel_backend

from swarm.client import Pool
from swarm.errors import TaskError

__all__ = ["SwarmBackend", "register"]


class SwarmBackend(ParallelBackendBase):
    """joblib backend over swarm's built-in worker (see module doc)."""

    supports_retrieve_callback = True
    supports_timeout = True

    def __init__(self, pool: Optional[Pool] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._shared_pool = pool
        self._pool: Optional[Pool] = pool
        self._executor: Any = None

    def effective_n_jobs(self, n_jobs: Optional[int]) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 has no meaning")
        if self._shared_pool is not None:
            return self._shared_pool.size
        cpus = len(os.sched_getaffinity(0))
        if n_jobs is None:
            return cpus
        return max(cpus + 1 + n_jobs, 1) if n_jobs < 0 else n_jobs

    def configure(self, n_jobs: Optional[int] = 1, parallel: Any = None,
                  **backend_kwargs: Any) -> int:
        n = self.effective_n_jobs(n_jobs)
        self.parallel = parallel
        if self._pool is None:
            self._pool = Pool(workers=n)
        self._executor = self._pool.executor()
        return n

    def submit(self, func: Callable[[], Any], callback: Optional[Callable[[Any], None]] = None) -> Any:
        future = self._executor.submit(func)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, future: Any) -> Any:
        try:
            return future.result()
        except TaskError as exc:
            if exc.exception is not None:
                raise exc.exception from exc
            raise

    def terminate(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if self._pool is not None and self._shared_pool is None:
            self._pool.close()
            self._pool = None

    def abort_everything(self, ensure_ready: bool = True) -> None:
        n = self._pool.size if self._pool is not None else 1
        self.terminate()
        if ensure_ready:
            self.configure(n_jobs=n, parallel=self.parallel)


def register(name: str = "swarm", pool: Optional[Pool] = None) -> None:
    """Register swarm as joblib backend ``name`` (optionally sharing ``pool``)."""
    register_parallel_backend(name, lambda **kwargs: SwarmBackend(pool=pool, **kwargs))
