"""Uses the whole public API; checked with mypy --strict (not run)."""
from __future__ import annotations

import time
from concurrent.futures import Future
from typing import Any, Dict, Iterator, List, Optional, Tuple

import swarm
from swarm import Socket, SwarmError, TaskError, WorkerDied
from swarm.client import Batch, BatchError, BatchManager, Pool, Sprint
from swarm.executor import SwarmExecutor
from swarm.worker import run


def square(x: int) -> int:
    return x * x


def use_pool() -> List[Any]:
    version: str = swarm.__version__
    with Pool(workers=2, max_workers=4, idle_timeout=1.0, max_retries=1,
              start_timeout=30.0) as pool:
        pids: List[int] = pool.pids
        manager = BatchManager(pool, [(square, i) for i in range(4)], init_data=None,
                               max_retries=0, task_timeout=10.0)
        batch: Batch = manager.batch
        batch.start(tta=time.time() + 10, progress=False)
        ordered: Iterator[Any] = batch.yield_results(return_exceptions=True, timeout=5.0)
        results: List[Any] = batch.list_results(return_exceptions=False, timeout=5.0)
        stats: Dict[str, Any] = batch.stats
        met: Optional[bool] = batch.tta_met
        sprint = pool.submit_sprint(Sprint(tta=None, init_data=None, max_retries=1,
                                           task_timeout=None))
        ids: range = sprint.submit_tasks([(square, 3)])
        pairs: List[Tuple[int, Any]] = list(sprint.yield_results(timeout=5.0))
        with pool.executor() as executor:
            future: Future[Any] = executor.submit(square, 2)
            mapped: List[Any] = list(executor.map(square, [1, 2], chunksize=2))
        assert isinstance(executor, SwarmExecutor)
        try:
            BatchManager(pool, [1]).batch.list_results()
        except BatchError as err:
            errors: Dict[int, TaskError] = err.errors
            partial: List[Any] = err.results
        pool.close()
    return [version, pids, results, stats, met, ids, pairs, future, mapped]


def use_socket(pid: int) -> Tuple[Any, Any]:
    with Socket(pid, max_frame=1 << 20) as worker:
        worker.connect(timeout=5.0)
        worker.initialize((1,), timeout=5.0)
        try:
            return worker.do_task([0, (1,)], timeout=5.0)
        except TaskError as err:
            phase: str = err.phase
            tb: str = err.remote_traceback
            original: Optional[BaseException] = err.exception
            raise SwarmError(phase + tb) from original
        except WorkerDied:
            raise


def serve() -> None:
    run(task_processor=square, initializer=None, max_frame=1 << 20)
