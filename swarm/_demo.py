"""The demonstration behind ``python -m swarm demo``.

A batch of numpy tasks with a deadline the starting pool cannot meet: each
task waits on simulated I/O (a sleep, as a pipeline waits on storage or a
service) and then computes on its array, so more workers help even on a
2-core machine. The pool starts with one worker and launches more, in front
of the user, until the projection meets the tta.
"""

import time

# The batch: TASKS tasks of about (IO_WAIT_S + a few ms of FFT) each, on
# arrays of SIGNAL_SAMPLES float64. One worker needs ~TASKS x 0.07 s; the
# tta leaves TTA_S.
TASKS = 200
IO_WAIT_S = 0.06
SIGNAL_SAMPLES = 1 << 16
TTA_S = 6.0


def band_energy(samples, window):
    """One task: wait for 'I/O', then the windowed spectrum's energy."""
    import numpy as np
    time.sleep(IO_WAIT_S)
    spectrum = np.fft.rfft(samples * window)
    return float(np.sum(np.abs(spectrum) ** 2))


def main() -> int:
    import numpy as np

    from swarm.client import BatchManager, Pool

    rng = np.random.default_rng(0)
    window = np.hanning(SIGNAL_SAMPLES)
    signals = [rng.standard_normal(SIGNAL_SAMPLES) for _ in range(TASKS)]
    tasks = [(band_energy, s, window) for s in signals]
    one_worker_s = TASKS * (IO_WAIT_S + 0.005)

    print(f"swarm demo: {TASKS} tasks, each a {SIGNAL_SAMPLES * 8 // 1024} KiB numpy array "
          f"sent to a worker process over AF_UNIX")
    print(f"  one worker would need about {one_worker_s:.0f} s; the deadline (tta) is "
          f"{TTA_S:.0f} s from now")
    print("  the pool starts with 1 worker and launches more when the batch runs behind\n",
          flush=True)
    started = time.time()
    with Pool(workers=1, max_workers=8, idle_timeout=1.0) as pool:
        batch = BatchManager(pool, tasks).batch
        peak = 1
        batch.start(tta=started + TTA_S, progress=_has_tqdm())
        energies = []
        for energy in batch.yield_results():
            energies.append(energy)
            peak = max(peak, len(pool.pids))
        stats = batch.stats
    elapsed = time.time() - started

    window_energy = [float(np.sum(np.abs(np.fft.rfft(s * window)) ** 2)) for s in signals[:5]]
    assert np.allclose(energies[:5], window_energy), "results differ from a local run"
    verdict = "met" if stats["tta_met"] else f"missed by {stats['missed_by_s']:.2f} s"
    print(f"\n  tasks done        {stats['tasks_done']} of {TASKS} (in task order; "
          f"the first 5 checked against a local run)")
    print(f"  workers           started with 1, launched {stats['workers_launched']} "
          f"for the deadline, peak {peak}")
    print(f"  time              {elapsed:.2f} s for about {one_worker_s:.0f} s of one worker's work")
    print(f"  deadline (tta)    {verdict}")
    print("  every worker stopped and every socket file removed on leaving the pool")
    return 0


def _has_tqdm() -> bool:
    try:
        import tqdm  # noqa: F401  (only asking whether it is there)
    except ImportError:
        print("  (pip install 'swarm[progress]' for a live progress bar)")
        return False
    return True
