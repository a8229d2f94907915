"""Where Numba keeps its compiled kernels, and a ``njit`` that never breaks an import.

Every kernel module decorates with :func:`cached_njit` instead of ``numba.njit(cache=True)``.
Numba looks for a writable cache directory when a function is decorated: ``NUMBA_CACHE_DIR``
if set, else ``__pycache__`` next to the source, else a per-user directory, and raises if
none is writable (a read-only site-packages on a shared machine). Before the first kernel
is decorated, :func:`ensure_cache_dir` checks those places the same way and, when none is
writable, points Numba at a private directory under the system temporary directory. So the
package always imports; at worst the kernels are compiled again in a fresh process.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba

_CHECKED = False


def _writable(path: Path) -> bool:
    """Whether a file can be created in ``path`` (created if missing). Tries for real:
    ``os.access`` says yes to root even on read-only mounts."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
        return True
    except OSError:
        return False


def fallback_cache_dir() -> Path:
    """The private temporary cache directory used when nothing else is writable."""
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"autodiff_lab-numba-cache-{uid}"


def ensure_cache_dir() -> str | None:
    """Make sure Numba has a writable cache directory; returns the one chosen by us
    (``None`` when Numba's own choice, e.g. the in-tree ``__pycache__``, is writable)."""
    global _CHECKED
    user_dir = numba.config.CACHE_DIR
    if user_dir and _writable(Path(user_dir)):
        _CHECKED = True
        return user_dir
    if not user_dir and _writable(Path(__file__).parent / "__pycache__"):
        _CHECKED = True
        return None
    fallback = fallback_cache_dir()
    if _writable(fallback):
        numba.config.CACHE_DIR = str(fallback)
        _CHECKED = True
        return str(fallback)
    _CHECKED = True
    return None  # cached_njit falls back to cache=False


def prefer_workqueue() -> None:
    """Use Numba's ``workqueue`` threading layer unless the user chose one.

    Numba picks OpenMP when libgomp is present; OpenMP workers spin after every parallel
    region, and so do OpenBLAS's threads after every matrix product. Our kernels alternate
    the two, and on a 2-core machine the spinning threads took the cores from each other:
    the DnCNN gradient measured 5–10× slower than with ``workqueue``, whose idle workers
    sleep. Must run before the first parallel kernel starts the thread pool.
    """
    if not os.environ.get("NUMBA_THREADING_LAYER"):
        numba.config.THREADING_LAYER = "workqueue"


def cached_njit(*args: Any, **options: Any) -> Callable[..., Any]:
    """``numba.njit(cache=True, **options)``, after :func:`ensure_cache_dir`; if Numba still
    finds no cache location, the kernel is compiled without caching instead of failing."""
    if not _CHECKED:
        ensure_cache_dir()
        prefer_workqueue()

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(cache=False, **options)(fn)

    if args and callable(args[0]):
        return decorate(args[0])
    return decorate
