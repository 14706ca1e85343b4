"""Echo worker for the benchmarks: a swarm worker whose task returns its argument."""

from swarm.worker import run


def echo(x):
    return x


if __name__ == "__main__":
    run(task_processor=echo)
