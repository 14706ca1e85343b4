"""Type stubs for swarm._core.runner (compiled from runner.pyx)."""

from typing import Any, Callable, Dict, List, Optional, Tuple, Type, Union

def run_chunk(
    tasks: List[Any],
    fn: Callable[..., Any],
    builtin: bool,
    progress: Optional[memoryview],
    error_body: Callable[[BaseException], Any],
    stop: Union[Type[BaseException], Tuple[Type[BaseException], ...]],
) -> Tuple[List[Any], Optional[Dict[int, Any]]]:
    """Run every task of a chunk in order; ``(results, errors)``."""
