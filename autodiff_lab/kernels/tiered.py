"""Tiered kernels: the numpy reference while Numba compiles in a background process.

With an empty Numba cache the first gradient of a convolutional network used to wait
several seconds for Numba to compile every kernel it touches. Instead, while the cache
does not hold our kernels for a dtype yet, :func:`ready` answers ``False`` and
:func:`.dispatch.real_float` sends the call to the reference path (the op table's numpy
rule or :mod:`.conv_reference`, the definition of every op), and ONE background process
per process runs :func:`.precompile.precompile` (:func:`run_background`, in a new Python
process at the lowest CPU priority), which fills the cache. Once it has
finished a dtype it writes a stamp file next to the cache; the next check here sees it and
every later call of that dtype takes the Numba kernels, which then *load* from the cache
(milliseconds) rather than compile.

* Results: the reference and the fast kernels compute the same functions; they differ only
  in floating-point rounding (summation order), as between any two of our kernels.
* The check is a file stat, at most every :data:`CHECK_INTERVAL` seconds (between checks
  a cold dtype stays on the reference path without looking).
* The background process is started in a session of its own, with no terminal input or
  output, and is *detached*: it never delays the exit of the process that started it, and
  a short script leaves it to finish filling the cache (~10-25 s), which makes the next
  run a warm one. It ends itself after :data:`BACKGROUND_TIMEOUT` seconds in any case.
  Only one runs per cache directory at a time (a lock file), so many short scripts do not
  start many compilers.
* Off: ``ADL_BACKGROUND_COMPILE=0`` in the environment, or ``tiered.enabled = False``
  (the test suite does this; :func:`foreground` does it for the report, training and the
  benchmarks, which time their calls); also whenever no cache directory could be used
  (:data:`.numba_cache.caching_enabled` False) or only a temporary one removed at exit
  -- then kernels compile in the foreground as before.
* The stamp names the Numba and Python versions and the size and modification time of
  every kernel source file, as Numba's own cache index does; kernels the precompile
  workloads do not reach (pooling, transpose convolution, ...) still compile at their
  first use once their dtype is ready. A cache directory shared between machines with
  different CPUs can hold a stamp whose kernels Numba does not accept: they then compile
  in the foreground, as without tiers.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

#: the environment variable that switches background compilation off ("0", "false", "no")
ENV = "ADL_BACKGROUND_COMPILE"
#: None: follow :data:`ENV` (on unless it says 0/false/no/off); True/False: this process
enabled: bool | None = None
#: seconds between two looks for the stamp while a dtype is still on the reference path
CHECK_INTERVAL = 0.25
#: the background compile ends itself after this many seconds
BACKGROUND_TIMEOUT = 600
#: the dtypes the background compile fills the cache for (the one that asked first, first)
background_dtypes: tuple[str, ...] = ("float32", "float64")

_DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}
#: dtypes whose calls take the Numba kernels (all of them when tiers are off)
ready_dtypes: set[np.dtype] = set()
_decided = False
_active = False
_last_check: dict[np.dtype, float] = {}
_proc: subprocess.Popen[bytes] | None = None
_started_at: float | None = None
_start_lock = threading.Lock()  # one background start even when threads race to it


def _env_on() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def is_on() -> bool:
    """Whether background compilation is switched on (setting and environment; the cache
    may still rule it out, see :func:`ready`)."""
    return _env_on() if enabled is None else bool(enabled)


def stamp_dir() -> Path | None:
    """Where the stamps live: a folder in the Numba cache directory this process uses, or
    ``None`` when there is none (caching off) or it is removed when this process exits."""
    from autodiff_lab.kernels import numba_cache
    root = numba_cache.cache_root()
    if root is None or numba_cache.ephemeral:  # no cache a background process could fill
        return None
    return root / "autodiff_lab-tiers"


_FINGERPRINT: str | None = None


def fingerprint() -> str:
    """What the cached kernels depend on: Numba and Python versions, the kernel sources
    (computed once per process, as Numba checks its cache's sources when it loads)."""
    global _FINGERPRINT
    if _FINGERPRINT is not None:
        return _FINGERPRINT
    from importlib.metadata import PackageNotFoundError, version
    try:
        numba_version = version("numba")
    except PackageNotFoundError:  # pragma: no cover - numba from a source tree
        numba_version = "?"
    h = hashlib.sha256(f"{numba_version} {sys.version} {sys.platform}".encode())
    for src in sorted(Path(__file__).parent.glob("*.py")):
        st = src.stat()
        h.update(f"{src.name} {st.st_size} {st.st_mtime_ns}".encode())
    _FINGERPRINT = h.hexdigest()[:20]
    return _FINGERPRINT


def stamp_path(dtype: str) -> Path | None:
    """The file saying the cache holds the precompiled kernels for ``dtype``."""
    folder = stamp_dir()
    return None if folder is None else folder / f"{fingerprint()}-{dtype}.done"


def write_stamp(dtype: str) -> None:
    """Record that the precompile workloads of ``dtype`` ran and their kernels are cached."""
    path = stamp_path(dtype)
    if path is None:
        return
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(f"{time.time()}\n")
        os.replace(tmp, path)
    except OSError:
        pass


def _decide() -> None:
    global _decided, _active
    _decided = True
    _active = is_on() and stamp_dir() is not None
    if not _active:
        ready_dtypes.update(_DTYPES)


def reset() -> None:
    """Forget what this process decided (after changing :data:`enabled`; for tests)."""
    global _decided, _active
    _decided = _active = False
    ready_dtypes.clear()
    _last_check.clear()


def foreground() -> None:
    """Compile kernels in this process from now on, as without tiers. For long jobs and for
    anything that times its calls (the comparison report, training, benchmarks): a call on
    the reference path is several times slower, and a job that runs longer than the
    background compile gains nothing from it."""
    global enabled
    enabled = False


def ready(dtype: np.dtype) -> bool:
    """Whether calls on ``dtype`` arrays should take the Numba kernels now. ``False`` only
    while tiers are on and the cache does not hold the kernels yet; the first such answer
    starts the background compile."""
    if dtype in ready_dtypes:
        return True
    if not _decided:
        _decide()
        if dtype in ready_dtypes:
            return True
    if dtype not in _DTYPES:
        return True
    if not is_on():  # switched off after the decision
        ready_dtypes.update(_DTYPES)
        return True
    now = time.monotonic()
    last = _last_check.get(dtype)
    if last is not None and now - last < CHECK_INTERVAL:
        return False
    _last_check[dtype] = now
    path = stamp_path(_DTYPES[dtype])
    if path is None or path.exists():
        ready_dtypes.add(dtype)
        return True
    _start_background(_DTYPES[dtype])
    if _proc is not None:
        _proc.poll()  # reaps it once it has ended
    return False


def _lock_busy(folder: Path) -> bool:
    """Whether another process's background compile holds the lock of ``folder``."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return False
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # releases the lock if we got it
    return False


def _start_background(first: str) -> None:
    """Start the one background compile of this process (``first`` dtype first)."""
    global _proc, _started_at
    with _start_lock:
        if _started_at is not None:
            return
        _started_at = time.monotonic()
    folder = stamp_dir()
    if folder is None or _lock_busy(folder):
        return
    import autodiff_lab
    from autodiff_lab.kernels import numba_cache
    env = dict(os.environ)
    env[ENV] = "0"
    if numba_cache.configured_dir():  # the directory this process reads, not a new choice
        env["NUMBA_CACHE_DIR"] = numba_cache.configured_dir()
    package_root = str(Path(autodiff_lab.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([package_root] + ([env["PYTHONPATH"]]
                                                          if env.get("PYTHONPATH") else []))
    others = [d for d in background_dtypes if d != first]
    # lowest CPU priority first thing: the reference path in this process keeps the cores
    boot = ("import os, sys\ntry:\n    os.nice(19)\nexcept (AttributeError, OSError):\n"
            "    pass\nfrom autodiff_lab.kernels.tiered import run_background\n"
            f"sys.exit(run_background({[first] + others!r}))\n")
    cmd = [sys.executable, "-c", boot]
    try:
        _proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True, close_fds=True)
    except OSError:
        _proc = None


def background_pid() -> int | None:
    """The process id of the background compile this process started (``None``: none)."""
    return None if _proc is None else _proc.pid


def run_background(dtypes: list[str]) -> int:
    """The background process's work: hold the lock, compile ``dtypes`` into the cache
    (each dtype's stamp is written by :func:`.precompile.precompile` when it is done),
    give up after :data:`BACKGROUND_TIMEOUT` seconds."""
    import signal
    if hasattr(signal, "alarm"):
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # the default action ends the process
        signal.alarm(BACKGROUND_TIMEOUT)
    global enabled
    enabled = False
    reset()
    folder = stamp_dir()
    if folder is None:
        return 1
    import fcntl
    folder.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another one is at it
    from autodiff_lab.kernels import precompile
    todo = [d for d in dtypes if (p := stamp_path(d)) is not None and not p.exists()]
    if todo:
        precompile.precompile(todo)
    return 0


def describe() -> dict[str, Any]:
    """This process's state, for messages and benchmarks."""
    return {"on": is_on(), "active": _active, "ready": sorted(_DTYPES[d] for d in ready_dtypes
                                                              if d in _DTYPES),
            "background_pid": background_pid()}
