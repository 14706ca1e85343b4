"""Task functions for bench/pool_overhead.py.

They live in an importable module (not ``__main__``) because every pool
pickles the callable by reference and its workers import it by name.
"""

import time


def noop():
    """The no-op task of swarm's built-in worker: a task is ``(noop,)``."""
    return None


def noop_with_arg(_x):
    """The no-op task of the map-style peers, which pass one argument."""
    return None


def sleep_for(seconds):
    """Sleep ``seconds`` (``time.sleep``) and return them, so that ordered
    results can be checked against the input."""
    time.sleep(seconds)
    return seconds


def echo(x):
    """Return the argument: a payload's round trip (bench/backends.py)."""
    return x
