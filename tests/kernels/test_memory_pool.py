"""The pool of recycled kernel outputs is bounded, least recently used shapes go first,
and it can be emptied; a sweep over batch sizes does not keep every size for good."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from autodiff_lab.kernels import memory

ROOT = Path(__file__).resolve().parents[2]
MB = 1 << 20


@pytest.fixture
def small_pool():
    """A 4 MiB pool for this thread, emptied before and after."""
    memory.clear_pool()
    previous = memory.set_pool_limit(4 * MB)
    yield
    memory.set_pool_limit(previous)
    memory.clear_pool()


def _shape(n_mb: float) -> tuple[int, int]:
    return (int(n_mb * MB) // 8 // 128, 128)  # float64


def test_free_arrays_are_recycled_and_used_ones_are_not(small_pool):
    a = memory.empty(_shape(1), np.float64)
    b = memory.empty(_shape(1), np.float64)
    assert a is not b  # a is still in use
    a_id = id(a)
    del a
    c = memory.empty(_shape(1), np.float64)
    assert id(c) == a_id
    assert memory.pooled_bytes() == 2 * MB


def test_the_pool_stays_under_its_limit_dropping_the_least_recently_used(small_pool):
    kept = memory.empty(_shape(1), np.float64)
    kept_id = id(kept)
    del kept
    for k in range(2, 12):  # ten other shapes, each 1 MiB + k rows
        memory.empty((_shape(1)[0] + k, 128), np.float64)
        assert memory.pooled_bytes() <= 4 * MB
        again = memory.empty(_shape(1), np.float64)  # in use each round: stays recent
        assert id(again) == kept_id
        del again
    assert memory.pooled_bytes() <= 4 * MB


def test_an_array_bigger_than_the_limit_is_not_kept(small_pool):
    big = memory.empty(_shape(8), np.float64)
    assert big.shape == _shape(8) and memory.pooled_bytes() == 0


def test_clear_pool_and_a_limit_of_zero(small_pool):
    memory.empty(_shape(1), np.float64)
    memory.empty(_shape(2), np.float64)
    assert memory.clear_pool() == 3 * MB and memory.pooled_bytes() == 0
    memory.set_pool_limit(0)
    memory.empty(_shape(1), np.float64)
    assert memory.pooled_bytes() == 0
    with pytest.raises(ValueError, match="at least 0"):
        memory.set_pool_limit(-1)


def test_lowering_the_limit_trims_the_pool(small_pool):
    memory.empty(_shape(1), np.float64)
    memory.empty(_shape(2), np.float64)
    memory.set_pool_limit(2 * MB)
    assert memory.pooled_bytes() <= 2 * MB


#: the pool limit the sweep runs with, and what RSS may grow by beyond it (the allocator's
#: own free lists, Numba and numpy internals): measured 25 MiB with no pool at all. Before
#: the bound, the same sweep kept ~260 MiB.
SWEEP_POOL_MB = 32
SWEEP_SLACK_MB = 64
AFTER_CLEAR_MB = 48

SWEEP = textwrap.dedent(f"""
    import os
    import autodiff_lab as adl
    from autodiff_lab import examples as E
    from autodiff_lab.kernels import memory

    def rss_mb():
        with open("/proc/self/statm") as f:  # resident pages, no psutil needed
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    memory.set_pool_limit({SWEEP_POOL_MB} << 20)
    for batch in range(1, 41):
        ex = E.dncnn(batch=batch, size=24, channels=8, depth=4)
        adl.engine("tape").compile(ex.graph)(ex.values)
        del ex
        if batch == 1:
            start = rss_mb()  # kernels compiled, first buffers allocated
        assert memory.pooled_bytes() <= {SWEEP_POOL_MB} << 20
    grown = rss_mb() - start
    memory.clear_pool()
    after_clear = rss_mb() - start
    print(f"grown {{grown:.1f}} after_clear {{after_clear:.1f}}")
""")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc (Linux)")
def test_a_sweep_over_batch_sizes_does_not_keep_every_size():
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", SWEEP], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    words = proc.stdout.split()
    grown, after_clear = float(words[1]), float(words[3])
    assert grown <= SWEEP_POOL_MB + SWEEP_SLACK_MB, proc.stdout
    assert after_clear <= AFTER_CLEAR_MB, proc.stdout


FAULTS = textwrap.dedent("""
    import ctypes, ctypes.util, resource
    # glibc's mmap threshold fixed at its default (128 KiB): without this, a big free raises
    # it for the rest of the process and fresh arrays would come from the heap by luck
    ctypes.CDLL(ctypes.util.find_library("c")).mallopt(-3, 128 << 10)
    import autodiff_lab as adl
    from autodiff_lab import examples as E

    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    for dtype in ("float64", "float32"):
        ex = E.mlp(bias=False, dtype=dtype)  # 784-256-784, batch 64: 1.6 MB weight gradients
        program = adl.engine("tape").compile(ex.graph, wrt=["W1", "W2"])
        for _ in range(10):  # (the 5th or so loads the compiled finite check: a one-off)
            program(ex.values)
        before = faults()
        for _ in range(20):
            program(ex.values)
        print(dtype, (faults() - before) / 20)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt, Linux faults")
def test_the_mlp_gradient_maps_no_fresh_memory_per_call():
    # every product and the loss's difference come from recycled arrays: before, each f64
    # gradient faulted ~1,100 fresh 4 KiB pages in (3.4-3.8 ms against 1.4-1.9 ms now)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "ADL_BACKGROUND_COMPILE": "0"}
    proc = subprocess.run([sys.executable, "-c", FAULTS], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    per_call = dict(line.split() for line in proc.stdout.splitlines())
    assert set(per_call) == {"float64", "float32"}, proc.stdout
    # pages per gradient: ~10 here; up to ~40 where glibc trims the top of its heap after
    # the small (64 KiB) temporaries of a call and maps it again on the next one
    assert all(float(n) < 100 for n in per_call.values()), proc.stdout


def test_clear_scratch_drops_every_threads_kernel_buffers():
    """The kernels' reusable buffers are per thread; clear_scratch drops the workers' too,
    a buffer still in use stays valid, and a finished thread's buffers are not kept."""
    import gc
    import threading

    from autodiff_lab.kernels import conv_fast

    conv_fast.clear_scratch()
    here = conv_fast.scratch("test_slot", (1000,), np.float32)
    here[:] = 7
    before = len(conv_fast._scratch_pools)  # this thread's, and any kernel worker's
    seen = {}

    def worker():
        conv_fast.scratch("test_slot", (2000,), np.float64)
        seen["bytes"] = conv_fast.scratch_bytes()
        ready.set()
        done.wait()

    ready, done = threading.Event(), threading.Event()
    t = threading.Thread(target=worker)
    t.start()
    assert ready.wait(10)
    assert seen["bytes"] == 16000
    assert len(conv_fast._scratch_pools) == before + 1
    assert conv_fast.clear_scratch() == 4000 + 16000
    assert conv_fast.scratch_bytes() == 0
    assert (here == 7).all()  # the view keeps its buffer
    done.set()
    t.join()
    gc.collect()
    assert len(conv_fast._scratch_pools) == before  # the finished thread's pool went with it
    assert conv_fast.clear_scratch() == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matrix_products_recycle_big_results_and_leave_small_ones_to_numpy(small_pool, dtype):
    from autodiff_lab.kernels import dispatch

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((8, 16)).astype(dtype), rng.standard_normal((16, 4)).astype(dtype)
    small = dispatch.matmul(a, b)
    np.testing.assert_array_equal(small, a @ b)
    assert small.dtype == dtype and memory.pooled_bytes() == 0  # below the pool's size
    rows = memory.POOL_MIN_BYTES // np.dtype(dtype).itemsize // 64
    a, b = rng.standard_normal((rows, 16)).astype(dtype), rng.standard_normal((16, 64)).astype(dtype)
    big = dispatch.matmul(a, b)
    np.testing.assert_array_equal(big, a @ b)
    assert memory.pooled_bytes() == big.nbytes
    big_id = id(big)
    del big
    assert id(dispatch.matmul(a, b)) == big_id  # handed out again once free
