"""One compiled tape program called from several Python threads at once.

Notebooks and web demos do this. Numba's ``workqueue`` threading layer aborts the whole
process when two threads launch parallel kernels concurrently, so the script runs in a
subprocess: an abort fails the test instead of killing pytest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import threading
    import numpy as np
    import autodiff_lab as adl
    from autodiff_lab import examples as E
    from autodiff_lab.kernels import dispatch

    # big enough for the parallel kernels: conv, batch norm and ReLU (>= 2**15 elements)
    dn = E.dncnn(batch=4, size=24, channels=16, depth=4)
    mlp = E.mlp(d_in=64, hidden=256, batch=128)
    assert 4 * 16 * 24 * 24 >= dispatch.ELEMENTWISE_MIN_SIZE
    assert 256 * 128 >= dispatch.ELEMENTWISE_MIN_SIZE
    cases = [(adl.engine("tape").compile(ex.graph), ex.values) for ex in (dn, mlp)]

    def run_all(kernel_threads):
        dispatch.kernel_threads = kernel_threads
        expected = [program(values) for program, values in cases]  # one thread
        failures = []

        def work():
            try:
                for _ in range(6):
                    for (program, values), ref in zip(cases, expected):
                        r = program(values)
                        assert np.array_equal(r.value, ref.value)
                        for name, grad in ref.grads.items():
                            assert np.array_equal(r.grads[name], grad), name
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                failures.append(repr(exc))

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures, failures

    run_all(1)      # the default: one Numba thread per kernel
    run_all(None)   # Numba's own thread count
    print("threads ok")
""")


def test_four_threads_calling_one_program_match_one_thread():
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "threads ok" in proc.stdout
