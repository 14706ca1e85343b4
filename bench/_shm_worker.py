"""Worker for bench/shm_threshold.py: ``("echo", x)`` returns x, ``("sink", x)``
returns None (one-way transfer of x)."""

from swarm.worker import run


def task(op, x):
    return x if op == "echo" else None


if __name__ == "__main__":
    run(task_processor=task)
