"""Whether a parallel Numba kernel may start its threads on this call.

The kernels run on one Numba thread by default (:data:`.dispatch.kernel_threads`). Setting
Numba's thread count to one around each kernel call and back (``numba.set_num_threads``,
which is per Python thread) cost ~7 µs per call on the 2-core machine, more than many of
the kernels take (a ReLU over 16,384 elements: 5.6 µs). So the kernel dispatch asks for one
thread with a flag of the calling Python thread instead, and the kernel modules that choose
between a serial and a parallel loop read it through :func:`many`. A module does so when
it says ``ONE_THREAD_FLAG = True``; the dispatch sets Numba's count around the calls of the
other modules, as before.
"""

from __future__ import annotations

import threading

_local = threading.local()


def one_thread() -> bool:
    """Whether this Python thread's kernel call was asked to stay on one thread."""
    return getattr(_local, "one", False)


def set_one_thread(on: bool) -> bool:
    """Ask (or stop asking) this Python thread's kernels for one thread; returns the previous
    setting, for the caller to put back."""
    previous = getattr(_local, "one", False)
    _local.one = on
    return previous


def many() -> bool:
    """Whether a parallel loop may run now: this thread's call was not asked for one thread,
    and Numba has more than one thread for it."""
    if getattr(_local, "one", False):
        return False
    import numba  # loaded already by every kernel module that asks

    return numba.get_num_threads() > 1
