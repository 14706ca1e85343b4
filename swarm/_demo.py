"""The demonstration behind ``python -m swarm demo``."""

import os
import subprocess
import sys
import time

from swarm.client import Socket


def spectral_energy(samples, window):
    """A small numeric task: windowed FFT energy of a signal."""
    import numpy as np
    return float(np.sum(np.abs(np.fft.rfft(samples * window)) ** 2))


def main() -> int:
    import numpy as np

    rng = np.random.default_rng(0)
    window = np.hanning(1 << 16)
    signals = [rng.standard_normal(1 << 16) for _ in range(40)]

    print("swarm demo: two worker processes, tasks carrying numpy arrays over AF_UNIX")
    env = dict(os.environ, SWARM_SYS_PATH=os.pathsep.join(sys.path))
    procs = [subprocess.Popen([sys.executable, "-m", "swarm.worker"], env=env)
             for _ in range(2)]
    sockets = []
    try:
        for proc in procs:
            sock = Socket(proc.pid)
            sock.connect(timeout=10)
            sockets.append(sock)
            print(f"  connected to worker pid {proc.pid}")
        start = time.perf_counter()
        energies = []
        for i, samples in enumerate(signals):
            sock = sockets[i % len(sockets)]
            task_id, energy = sock.do_task([i, (spectral_energy, samples, window)])
            assert task_id == i
            energies.append(energy)
        elapsed = time.perf_counter() - start
        expected = [spectral_energy(s, window) for s in signals]
        assert np.allclose(energies, expected)
        mib = sum(s.nbytes + window.nbytes for s in signals) / 2**20
        print(f"  {len(signals)} tasks, {mib:.0f} MiB of arrays sent, in {elapsed * 1e3:.0f} ms")
        print(f"  first results: {[round(e) for e in energies[:3]]} (checked against a local run)")
    finally:
        for sock in sockets:
            sock.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
    print("done: workers stopped, socket files removed")
    return 0
