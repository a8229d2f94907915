"""The training checkpoint file: one ``.npz`` archive written atomically.

A checkpoint holds everything :func:`autodiff_lab.nn.fit` needs to continue a run so that
it ends exactly where an uninterrupted run would:

* ``__format__`` -- ``"autodiff_lab.nn.checkpoint/1"``;
* ``__architecture__`` -- the model's class and constructor arguments, as in a file of
  :func:`autodiff_lab.nn.save` (so ``nn.load("run/checkpoint.npz")`` rebuilds the model);
* ``__meta__`` -- JSON: counters, position inside the epoch, the random generators'
  exact states, the optimiser's options, the schedule, the history and the configuration;
* ``model/<key>`` -- the model's state dict (parameters and buffers, PyTorch's names);
* any other array of the state (the optimiser's moment buffers, the epoch's permutation)
  under a descriptive key, referenced from ``__meta__``.

Nothing is pickled. :func:`atomic_write` writes to a temporary file in the target's
folder, flushes and fsyncs it, then renames it over the target (``os.replace``), so a
crash or a Ctrl-C while writing leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from autodiff_lab.errors import CheckpointError

FORMAT = "autodiff_lab.nn.checkpoint"
VERSION = 1


def check_format(fmt: str, expected: str, newest: int, where: str, unknown: str) -> None:
    """Refuse a file whose ``"kind/version"`` stamp is not ``expected`` (with the message
    ``unknown``) or is newer than ``newest``: one rule for checkpoints and model files."""
    kind, _, version = fmt.partition("/")
    if kind != expected:
        raise CheckpointError(unknown)
    if not version.isdigit() or int(version) > newest:
        raise CheckpointError(f"{where}format version {version!r} is newer than this "
                              f"autodiff_lab reads ({newest})")
MODEL_PREFIX = "model/"
_META_KEYS = ("__format__", "__architecture__", "__meta__")


# --------------------------------------------------------------------------------------
# writing files atomically
# --------------------------------------------------------------------------------------

def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, fsync it and rename it to
    ``path``. On any error (or Ctrl-C) the temporary file is removed and ``path`` keeps
    its previous content."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        _default_permissions(fd)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_folder(folder)
    return path


def _default_permissions(fd: int) -> None:
    """What ``open(path, "w")`` would give (mkstemp makes files readable by the owner only)."""
    mask = os.umask(0)
    os.umask(mask)
    try:
        os.fchmod(fd, 0o666 & ~mask)
    except (AttributeError, OSError):  # fchmod is POSIX only
        pass


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_arrays(f: IO[bytes], arrays: dict[str, np.ndarray]) -> None:
    """The archive writer (a function of its own so tests can make it fail)."""
    np.savez(f, **arrays)


# --------------------------------------------------------------------------------------
# nested state (dicts, lists, tuples, numbers, arrays) <-> JSON + named arrays
# --------------------------------------------------------------------------------------

def pack(value: Any, arrays: dict[str, np.ndarray], key: str) -> Any:
    """A JSON-ready copy of ``value``; every array in it goes into ``arrays`` under a key
    derived from ``key`` and is replaced by ``{"__array__": that key}``."""
    if isinstance(value, np.ndarray):
        arrays[key] = value
        return {"__array__": key}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [pack(v, arrays, f"{key}/{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [pack(v, arrays, f"{key}/{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise CheckpointError(f"cannot write {key!r} to a checkpoint: a dict with non-string keys")
        return {"__dict__": [[k, pack(v, arrays, f"{key}/{k}")] for k, v in value.items()]}
    raise CheckpointError(f"cannot write {key!r} to a checkpoint: a {type(value).__name__} is not "
                          "a number, string, list, dict or array")


def unpack(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    """The inverse of :func:`pack`."""
    if isinstance(value, list):
        return [unpack(v, arrays) for v in value]
    if not isinstance(value, dict):
        return value
    if "__array__" in value:
        key = value["__array__"]
        if key not in arrays:
            raise CheckpointError(f"the checkpoint refers to array {key!r}, which it does not hold")
        return arrays[key]
    if "__tuple__" in value:
        return tuple(unpack(v, arrays) for v in value["__tuple__"])
    if "__dict__" in value:
        return {k: unpack(v, arrays) for k, v in value["__dict__"]}
    raise CheckpointError(f"unknown entry {sorted(value)} in the checkpoint's metadata")


# --------------------------------------------------------------------------------------
# random generators
# --------------------------------------------------------------------------------------

def generator_state(gen: np.random.Generator) -> dict[str, Any]:
    """The exact state of ``gen`` (``gen.bit_generator.state``, a copy)."""
    return _copy_state(gen.bit_generator.state)


def _copy_state(state: Any) -> Any:
    if isinstance(state, dict):
        return {k: _copy_state(v) for k, v in state.items()}
    if isinstance(state, np.ndarray):
        return state.copy()
    return state


def restore_generator(gen: np.random.Generator | None, state: dict[str, Any]) -> np.random.Generator:
    """``gen`` set to ``state`` (a new Generator of the saved kind if ``gen`` is of another
    kind or ``None``)."""
    kind = state.get("bit_generator") if isinstance(state, dict) else None
    if gen is None or type(gen.bit_generator).__name__ != kind:
        cls = getattr(np.random, str(kind), None)
        if not (isinstance(cls, type) and issubclass(cls, np.random.BitGenerator)):
            raise CheckpointError(f"the checkpoint holds a random generator of unknown kind {kind!r}")
        gen = np.random.Generator(cls())
    try:
        gen.bit_generator.state = state
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"the checkpoint's {kind} generator state is corrupt ({exc})") from None
    return gen


# --------------------------------------------------------------------------------------
# the file
# --------------------------------------------------------------------------------------

@dataclass
class Checkpoint:
    """A checkpoint read back: ``meta`` (arrays put back in place), ``model_state`` (the
    model's state dict), ``architecture`` (JSON text, ``""`` if the model could not be
    described) and ``path``."""

    meta: dict[str, Any]
    model_state: dict[str, np.ndarray]
    architecture: str
    path: Path


def write_checkpoint(path: str | os.PathLike, meta: dict[str, Any], model_state: dict[str, np.ndarray],
                     architecture: str = "") -> Path:
    """Write a checkpoint atomically (see the module docstring)."""
    arrays: dict[str, np.ndarray] = {}
    meta_json = json.dumps(pack(meta, arrays, "state"))
    everything = {"__format__": np.array(f"{FORMAT}/{VERSION}"),
                  "__architecture__": np.array(architecture),
                  "__meta__": np.array(meta_json)}
    everything.update((MODEL_PREFIX + k, np.asarray(v)) for k, v in model_state.items())
    for k, v in arrays.items():
        if k in everything:
            raise CheckpointError(f"checkpoint key {k!r} is used twice")
        everything[k] = v
    return atomic_write(path, lambda f: _write_arrays(f, everything))


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :func:`write_checkpoint`; a missing, truncated or
    corrupt file, or a file of another kind, is a :class:`CheckpointError` saying so."""
    path = Path(path)
    where = f"checkpoint {str(path)!r}: "
    if path.is_dir():
        path = path / "checkpoint.npz"
        where = f"checkpoint {str(path)!r}: "
    if not path.is_file():
        raise CheckpointError(f"{where}no such file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{where}not a checkpoint (not an .npz archive: truncated, corrupt or "
                              "another kind of file)")
    try:
        with np.load(path, allow_pickle=False) as data:
            names = list(data.files)
            if "__format__" not in names or "__meta__" not in names:
                raise CheckpointError(f"{where}not a training checkpoint (no metadata entry); a model "
                                      "file of nn.save is read with nn.load")
            fmt = str(data["__format__"])
            check_format(fmt, FORMAT, VERSION, where,
                         f"{where}not a training checkpoint (format {fmt!r})")
            meta_text = str(data["__meta__"])
            architecture = str(data["__architecture__"]) if "__architecture__" in names else ""
            arrays = {k: data[k] for k in names if k not in _META_KEYS}
    except CheckpointError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise CheckpointError(f"{where}cannot be read: it is truncated or corrupt "
                              f"({type(exc).__name__}: {exc})") from None
    try:
        meta = unpack(json.loads(meta_text), arrays)
    except ValueError as exc:
        raise CheckpointError(f"{where}the metadata entry is corrupt ({exc})") from None
    except CheckpointError as exc:
        raise CheckpointError(f"{where}{exc}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}the metadata entry is corrupt (not a dict)")
    model_state = {k[len(MODEL_PREFIX):]: v for k, v in arrays.items() if k.startswith(MODEL_PREFIX)}
    return Checkpoint(meta, model_state, architecture, path)


__all__ = ["Checkpoint", "atomic_write", "generator_state", "pack", "read_checkpoint",
           "restore_generator", "unpack", "write_checkpoint"]
