"""Saving and loading whole models: one ``.npz`` file with the architecture and the weights.

The file holds the state dict (one array per key, PyTorch's names) plus two small text
entries: ``__format__`` and ``__architecture__``, a JSON description of the model: its
class (``"module.QualName"``) and constructor arguments, recursively for modules given as
arguments and for containers (``Sequential``, ``ModuleList``: their current children).
Constructor arguments are recorded automatically when a module is built, so any subclass
of :class:`~autodiff_lab.nn.module.Module` whose arguments are numbers, strings, tuples,
lists, dicts, dtypes or modules can be saved. Random generators passed as ``rng=`` are not
saved (the weights come from the file).

:func:`save` writes to a temporary file next to the target and renames it into place, so
an interrupted save never leaves a half-written model; :func:`load` rebuilds the model
and loads its state, and says what is wrong with a truncated or corrupt file, an unknown
class or weights that do not fit.
"""

from __future__ import annotations

import importlib
import json
import os
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from autodiff_lab.errors import AutodiffError, CheckpointError
from autodiff_lab.nn.checkpoint import FORMAT as CHECKPOINT_FORMAT
from autodiff_lab.nn.checkpoint import MODEL_PREFIX, atomic_write, check_format
from autodiff_lab.nn.module import REGISTRY, Module

FORMAT = "autodiff_lab.nn.model"
VERSION = 1
_META_KEYS = ("__format__", "__architecture__")


# --------------------------------------------------------------------------------------
# architecture <-> JSON-ready description
# --------------------------------------------------------------------------------------

def class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _encode(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Module):
        return {"__module__": describe_module(value)}
    if isinstance(value, np.random.Generator):
        return None  # weights come from the file, not from the generator
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return {"__dtype__": np.dtype(value).name}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise CheckpointError(f"cannot save {where}: a dict with non-string keys")
        return {"__dict__": [[k, _encode(v, f"{where}[{k!r}]")] for k, v in value.items()]}
    raise CheckpointError(f"cannot save {where}: a {type(value).__name__} cannot be written to "
                          "a model file (constructor arguments must be numbers, strings, tuples, "
                          "lists, dicts, dtypes or modules)")


def _decode(value: Any, where: str) -> Any:
    if isinstance(value, list):
        return [_decode(v, where) for v in value]
    if not isinstance(value, dict):
        return value
    if "__module__" in value:
        return build_module(value["__module__"], where)
    if "__tuple__" in value:
        return tuple(_decode(v, where) for v in value["__tuple__"])
    if "__dtype__" in value:
        return np.dtype(value["__dtype__"])
    if "__dict__" in value:
        return OrderedDict((k, _decode(v, where)) for k, v in value["__dict__"])
    raise CheckpointError(f"{where}unknown entry {sorted(value)} in the architecture")


def describe_module(module: Module) -> dict[str, Any]:
    """``{"class": ..., "args": [...], "kwargs": {...}}`` for ``module`` (see module docs)."""
    cls = type(module)
    name = class_name(cls)
    custom = getattr(module, "_architecture_arguments", None)
    if custom is not None and _defined_in(cls, "_architecture_arguments") is not \
            _defined_in(cls, "__init__"):
        custom = None  # a subclass with its own constructor: its recorded arguments
    if custom is not None:
        args, kwargs = custom()
    else:
        config = module.__dict__.get("_config")
        if config is None:
            args, kwargs = [], {}
        else:
            sig, arguments = config
            args, kwargs = [], {}
            for p in list(sig.parameters.values())[1:]:
                if p.name not in arguments:
                    continue
                v = arguments[p.name]
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                    args.append(v)
                elif p.kind == p.VAR_POSITIONAL:
                    args.extend(v)
                elif p.kind == p.KEYWORD_ONLY:
                    kwargs[p.name] = v
                else:  # **kwargs
                    kwargs.update(v)
    return {"class": name,
            "args": [_encode(v, f"{cls.__name__} argument {i}") for i, v in enumerate(args)],
            "kwargs": {k: _encode(v, f"{cls.__name__} argument {k!r}") for k, v in kwargs.items()}}


def _defined_in(cls: type, attr: str) -> type | None:
    """The class of ``cls``'s MRO whose own namespace defines ``attr``."""
    return next((k for k in cls.__mro__ if attr in k.__dict__), None)


def find_class(name: str, where: str = "") -> type[Module]:
    """The Module subclass a saved model names: registered subclasses first, then import."""
    cls: Any = REGISTRY.get(name)
    if cls is None:
        # "package.module.Class" or "package.module.Outer.Inner": import the longest
        # importable prefix, then follow the attributes
        parts = name.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            try:
                obj: Any = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for attr in parts[cut:]:
                obj = getattr(obj, attr, None)
            cls = obj
            break
    if not (isinstance(cls, type) and issubclass(cls, Module)):
        raise CheckpointError(f"{where}unknown model class {name!r}: it is not defined or "
                              "importable here; import the module that defines it before loading")
    return cls


def build_module(spec: Any, where: str = "") -> Module:
    """Rebuild a module from :func:`describe_module`'s description."""
    if not isinstance(spec, dict) or "class" not in spec:
        raise CheckpointError(f"{where}malformed architecture entry {spec!r:.80}")
    cls = find_class(str(spec["class"]), where)
    args = _decode(spec.get("args", []), where)
    raw_kwargs = spec.get("kwargs", {})
    if not isinstance(raw_kwargs, dict):
        raise CheckpointError(f"{where}malformed constructor arguments {raw_kwargs!r:.80}")
    kwargs = {str(k): _decode(v, where) for k, v in raw_kwargs.items()}
    try:
        return cls(*args, **kwargs)
    except AutodiffError as exc:
        raise CheckpointError(f"{where}cannot rebuild {cls.__name__} from the saved arguments: "
                              f"{exc}") from None
    except TypeError as exc:
        raise CheckpointError(f"{where}cannot rebuild {cls.__name__} from the saved arguments "
                              f"{args}, {kwargs}: {exc} (has its constructor changed?)") from None


# --------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------

def save(model: Module, path: str | os.PathLike) -> None:
    """Write ``model`` (architecture and state dict) to ``path`` as one ``.npz`` file,
    atomically: a temporary file in the same folder is renamed into place when complete."""
    if not isinstance(model, Module):
        raise CheckpointError(f"nn.save needs a Module, got {type(model).__name__}")
    path = Path(path)
    arch = json.dumps(describe_module(model))
    state = model.state_dict()
    clash = [k for k in state if k in _META_KEYS]
    if clash:
        raise CheckpointError(f"cannot save: state dict key(s) {clash} are reserved")
    arrays = {"__format__": np.array(f"{FORMAT}/{VERSION}"), "__architecture__": np.array(arch)}
    arrays.update(state)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load(path: str | os.PathLike) -> Module:
    """Rebuild the model saved at ``path`` by :func:`save` and load its weights. A training
    checkpoint of :func:`autodiff_lab.nn.fit` (``checkpoint.npz``) works too: its model."""
    path = Path(path)
    where = f"model file {str(path)!r}: "
    if not path.is_file():
        raise CheckpointError(f"{where}no such file")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            starts_like_npz = f.read(4) == b"PK\x03\x04"
        if starts_like_npz:  # the archive's directory sits at the end: cut off
            raise CheckpointError(f"{where}cannot be read: it is truncated or corrupt (an .npz "
                                  "archive without its directory)")
        raise CheckpointError(f"{where}not a model file (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            names = list(data.files)
            if "__format__" not in names or "__architecture__" not in names:
                raise CheckpointError(f"{where}not a model saved by nn.save (no architecture "
                                      "entry); for a bare state dict use np.load and "
                                      "model.load_state_dict")
            fmt = str(data["__format__"])
            arch_text = str(data["__architecture__"])
            if fmt.partition("/")[0] == CHECKPOINT_FORMAT:  # a training checkpoint: its model
                state = {k[len(MODEL_PREFIX):]: data[k] for k in names if k.startswith(MODEL_PREFIX)}
                fmt = f"{FORMAT}/{VERSION}"
                if not arch_text:
                    raise CheckpointError(f"{where}this training checkpoint holds no architecture (the "
                                          "model could not be described); build the model and load "
                                          "its state with nn.fit(..., resume=...)")
            else:
                state = {k: data[k] for k in names if k not in _META_KEYS}
    except CheckpointError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise CheckpointError(f"{where}cannot be read: it is truncated or corrupt "
                              f"({type(exc).__name__}: {exc})") from None
    check_format(fmt, FORMAT, VERSION, where, f"{where}unknown format {fmt!r}")
    try:
        spec = json.loads(arch_text)
    except ValueError as exc:
        raise CheckpointError(f"{where}the architecture entry is corrupt ({exc})") from None
    model = build_module(spec, where)
    floats = [v.dtype for v in state.values() if v.dtype.kind == "f"]
    if floats and model.dtype is not None and model.dtype != floats[0]:
        model.to(floats[0])  # cast after construction (model.float() before saving)
    try:
        model.load_state_dict(state)
    except CheckpointError as exc:
        raise CheckpointError(f"{where}{exc}") from None
    return model


__all__ = ["build_module", "describe_module", "load", "save"]
