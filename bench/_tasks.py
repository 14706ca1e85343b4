"""Task functions for the scripts in bench/.

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


def checksum(array):
    """Sum of every element of ``array``, as a float: the task reads all of
    its input and returns a few bytes."""
    return float(array.sum())


def identity(x):
    """Return the argument unchanged (an echo: the payload goes back)."""
    return x
