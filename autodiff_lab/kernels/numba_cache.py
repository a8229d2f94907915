"""Where Numba keeps its compiled kernels, and a ``njit`` that never breaks an import.

Every kernel module decorates with :func:`cached_njit` instead of ``numba.njit(cache=True)``.
Numba loads machine code from its cache directory, so that directory must be one nobody
else can write to. Before the first kernel is decorated, :func:`ensure_cache_dir` picks,
in this order:

1. ``NUMBA_CACHE_DIR`` when it is set and writable (the user's explicit choice);
2. Numba's own ``__pycache__`` next to the kernel sources, when writable;
3. a private per-user directory, ``$XDG_CACHE_HOME`` (or ``~/.cache``) then the system
   temporary directory: ``autodiff_lab-numba-cache[-<uid>]``, created with mode 0700. An
   existing one is used only if it is a real directory (not a symbolic link) owned by this
   user, not writable by anyone else, below folders only this user or root can change;
   an unsafe one is skipped with a :class:`NumbaCacheWarning`;
4. a fresh ``tempfile.mkdtemp`` directory (private, removed at exit: kernels are compiled
   again in the next process);
5. none: caching is switched off with a :class:`NumbaCacheWarning`, and the package still
   imports; kernels are compiled in every process.

A kernel is compiled at its first call with new argument types (only those), then loaded
from this directory by later processes; ``autodiff-lab precompile``
(:mod:`.precompile`) fills it ahead of time. :func:`cache_location` says where it is.
"""

from __future__ import annotations

import atexit
import os
import shutil
import stat
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: the name of our private cache directory (with ``-<uid>`` in the shared temporary folder)
CACHE_NAME = "autodiff_lab-numba-cache"

_CHECKED = False
#: the directory :func:`ensure_cache_dir` picked for Numba (None: the user's or Numba's own)
_CHOSEN: str | None = None
_APPLIED = False  # _CHOSEN and the threading layer handed to Numba
#: True when the cache is a fresh directory removed at exit: nothing outlives the process
ephemeral = False
#: False when no safe writable directory was found: kernels are compiled without caching
caching_enabled = True


class NumbaCacheWarning(UserWarning):
    """A Numba cache directory was unsafe and skipped, or kernels cannot be cached."""


class UnsafeCacheDirError(Exception):
    """A candidate directory exists but another user could have written into it."""


def _uid() -> int | None:
    return os.getuid() if hasattr(os, "getuid") else None


def _writable(path: Path) -> bool:
    """Whether a file can be created in the existing folder ``path``. Tries for real:
    ``os.access`` says yes to root even on read-only mounts."""
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
        return True
    except OSError:
        return False


def _check_ancestors(path: Path, uid: int) -> None:
    """Every folder above ``path`` must belong to this user or root, and be writable by
    others only with the sticky bit (like /tmp), so nobody can swap ``path`` for theirs."""
    for folder in path.parents:
        st = os.stat(folder)
        if st.st_uid not in (uid, 0):
            raise UnsafeCacheDirError(f"{folder} belongs to user {st.st_uid}")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            raise UnsafeCacheDirError(f"{folder} is writable by other users")


def private_dir(path: Path) -> Path | None:
    """``path`` as a private directory of this user: created with mode 0700, or checked
    when it exists (see the module docstring). ``None`` when it cannot be created or
    written to; :class:`UnsafeCacheDirError` when it exists but is not safe to load code from."""
    try:
        parent = Path(os.path.realpath(path.parent))
        parent.mkdir(parents=True, exist_ok=True)
        target = parent / path.name
        try:
            os.mkdir(target, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(target)
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeCacheDirError(f"{target} is a symbolic link")
    if not stat.S_ISDIR(st.st_mode):
        return None
    uid = _uid()
    if uid is not None:
        if st.st_uid != uid:
            raise UnsafeCacheDirError(f"{target} belongs to user {st.st_uid}, not {uid}")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UnsafeCacheDirError(f"{target} is writable by other users "
                          f"(mode {stat.S_IMODE(st.st_mode):o})")
        try:
            _check_ancestors(target, uid)
            if st.st_mode & 0o077:  # ours and only readable by others: make it private
                os.chmod(target, 0o700)
        except OSError:
            return None
    return target if _writable(target) else None


def user_cache_dir() -> Path | None:
    """Our directory in the user's cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        try:
            base = str(Path.home() / ".cache")
        except (RuntimeError, KeyError):  # no home directory can be determined
            return None
    return Path(base) / CACHE_NAME


def fallback_cache_dir() -> Path | None:
    """Our per-user directory in the system temporary folder (``None`` if there is none)."""
    try:
        tmp = tempfile.gettempdir()
    except OSError:  # FileNotFoundError: no usable temporary directory
        return None
    uid = _uid()
    return Path(tmp) / (f"{CACHE_NAME}-{uid}" if uid is not None else CACHE_NAME)


def _fresh_dir() -> Path | None:
    """A new private temporary directory, removed when the process exits."""
    global ephemeral
    try:
        path = Path(tempfile.mkdtemp(prefix=f"{CACHE_NAME}-"))
    except OSError:
        return None
    uid = _uid()
    try:
        if uid is not None:
            _check_ancestors(Path(os.path.realpath(path)), uid)
    except (UnsafeCacheDirError, OSError):
        shutil.rmtree(path, ignore_errors=True)
        return None
    atexit.register(shutil.rmtree, str(path), ignore_errors=True)
    ephemeral = True
    return path


def _private_candidate() -> Path | None:
    for candidate in (user_cache_dir(), fallback_cache_dir()):
        if candidate is None:
            continue
        try:
            found = private_dir(candidate)
        except UnsafeCacheDirError as why:
            warnings.warn(f"not using {candidate} for Numba's compiled kernels: {why}; "
                          "another user could place code there", NumbaCacheWarning,
                          stacklevel=4)
            continue
        if found is not None:
            return found
    return _fresh_dir()


def configured_dir() -> str:
    """Numba's cache directory setting ("" for its in-tree default), without importing
    Numba when it is not imported yet (then it is ``NUMBA_CACHE_DIR`` or our choice)."""
    numba = sys.modules.get("numba")
    config = getattr(numba, "config", None)
    if config is not None:
        return config.CACHE_DIR
    return _CHOSEN or os.environ.get("NUMBA_CACHE_DIR", "")


def cache_root() -> Path | None:
    """The folder Numba's cache files go to (``None``: caching is off); does not import
    Numba, so the tiers (:mod:`.tiered`) can look at it before any kernel is needed."""
    if not _CHECKED:
        ensure_cache_dir()
    if not caching_enabled:
        return None
    return Path(configured_dir() or Path(__file__).parent / "__pycache__")


def _apply() -> None:
    """Hand our choice of directory (and of threading layer) to Numba, importing it."""
    global _APPLIED
    import numba
    _APPLIED = True
    if _CHOSEN is not None:
        numba.config.CACHE_DIR = _CHOSEN
    prefer_workqueue()


def ensure_cache_dir() -> str | None:
    """Make sure Numba has a safe writable cache directory; returns the one chosen here
    (``None`` when Numba's own choice, the in-tree ``__pycache__``, is writable, or when
    caching had to be switched off). Numba gets it when it is imported here, else at the
    first kernel (:func:`cached_njit`)."""
    global _CHECKED, caching_enabled, _CHOSEN
    _CHECKED = True
    user_dir = configured_dir()
    if user_dir:
        path = Path(user_dir)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass
        if path.is_dir() and _writable(path):
            return user_dir
    else:
        in_tree = Path(__file__).parent / "__pycache__"
        try:
            in_tree.mkdir(exist_ok=True)
        except OSError:
            pass
        if in_tree.is_dir() and _writable(in_tree):
            return None
    chosen = _private_candidate()
    if chosen is None:
        caching_enabled = False
        warnings.warn("no safe writable directory for Numba's compiled kernels (set "
                      "NUMBA_CACHE_DIR to one); they are compiled again in every process",
                      NumbaCacheWarning, stacklevel=3)
        return None
    _CHOSEN = str(chosen)
    numba = sys.modules.get("numba")
    if getattr(numba, "config", None) is not None:
        numba.config.CACHE_DIR = _CHOSEN
    return _CHOSEN


def cache_location() -> str:
    """Where compiled kernels are kept, in words (for messages and ``precompile``)."""
    if not _CHECKED:
        ensure_cache_dir()
    if not caching_enabled:
        return "none (caching is off in this process)"
    return configured_dir() or f"{Path(__file__).parent / '__pycache__'} (next to the kernels)"


def prefer_workqueue() -> None:
    """Use Numba's ``workqueue`` threading layer unless the user chose one.

    Numba picks OpenMP when libgomp is present; OpenMP workers spin after every parallel
    region, and so do OpenBLAS's threads after every matrix product. Our kernels alternate
    the two, and on a 2-core machine the spinning threads took the cores from each other:
    the DnCNN gradient measured 5–10× slower than with ``workqueue``, whose idle workers
    sleep. Must run before the first parallel kernel starts the thread pool. ``workqueue``
    is not thread-safe: :mod:`.dispatch` launches one parallel kernel at a time under it.
    """
    if not os.environ.get("NUMBA_THREADING_LAYER"):
        import numba
        numba.config.THREADING_LAYER = "workqueue"


def cached_njit(*args: Any, **options: Any) -> Callable[..., Any]:
    """``numba.njit(cache=True, **options)``, after :func:`ensure_cache_dir`; without a safe
    cache location the kernel is compiled without caching instead of failing."""
    import numba
    if not _CHECKED:
        ensure_cache_dir()
    if not _APPLIED:
        _apply()

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not caching_enabled:
            return numba.njit(cache=False, **options)(fn)
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(cache=False, **options)(fn)

    if args and callable(args[0]):
        return decorate(args[0])
    return decorate
