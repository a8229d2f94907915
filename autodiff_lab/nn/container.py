"""Containers: ``Sequential`` (a chain of layers) and ``ModuleList`` (a list of submodules,
for models such as U-Nets that wire their layers by hand)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

from autodiff_lab.errors import InputError, ShapeError, TraceError
from autodiff_lab.nn.module import Module


def _shape(x: Any) -> Any:
    return getattr(x, "shape", None)


class Sequential(Module):
    """Layers applied one after the other: ``Sequential(Linear(784, 256), ReLU(), ...)``.

    Children are named ``"0"``, ``"1"``... (or by the keys of an ``OrderedDict`` given as
    the only argument), so parameters are ``"0.weight"``, ``"2.bias"`` as in PyTorch.
    """

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (OrderedDict, dict)):
            items: Iterable[tuple[str, Any]] = modules[0].items()
        else:
            items = ((str(i), m) for i, m in enumerate(modules))
        for name, m in items:
            if not isinstance(m, Module):
                raise TraceError(f"Sequential takes modules; item {name!r} is a "
                                 f"{type(m).__name__}")
            self.add_module(str(name), m)

    def _architecture_arguments(self) -> tuple[list[Any], dict[str, Any]]:
        names = list(self._modules)
        if names == [str(i) for i in range(len(names))]:
            return list(self._modules.values()), {}
        return [OrderedDict(self._modules)], {}

    def forward(self, x: Any) -> Any:
        previous: tuple[str, Module, Any] | None = None
        for name, layer in self._modules.items():
            if layer is None:
                continue
            try:
                y = layer(x)
            except (ShapeError, TraceError, InputError) as exc:
                if previous is None:
                    raise
                pname, pmod, pshape = previous
                error = type(exc)(f"{exc} -- it receives the output of layer "
                                  f"{pmod.path or pname!r} ({type(pmod).__name__}), shape {pshape}")
                error._layer = getattr(exc, "_layer", layer.path)  # type: ignore[attr-defined]
                raise error from None
            previous = (name, layer, _shape(y))
            x = y
        return x

    def __getitem__(self, index: int | slice) -> Any:
        mods = list(self._modules.values())
        if isinstance(index, slice):
            return Sequential(*mods[index])
        try:
            return mods[index]
        except IndexError:
            raise IndexError(f"Sequential has {len(mods)} layers; no index {index}") from None

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def append(self, module: Module) -> Sequential:
        """Add a layer at the end."""
        self.add_module(str(len(self._modules)), module)
        return self


class ModuleList(Module):
    """A list of submodules, registered as ``"0"``, ``"1"``...; it has no ``forward``: the
    model that holds it decides how they are wired (skip connections of a U-Net ...)."""

    def __init__(self, modules: Iterable[Module] | None = None) -> None:
        super().__init__()
        for m in modules or ():
            self.append(m)

    def _architecture_arguments(self) -> tuple[list[Any], dict[str, Any]]:
        return [list(self._modules.values())], {}

    def append(self, module: Module) -> ModuleList:
        """Add a module at the end."""
        if not isinstance(module, Module):
            raise TraceError(f"ModuleList holds modules, got {type(module).__name__}")
        self.add_module(str(len(self._modules)), module)
        return self

    def extend(self, modules: Iterable[Module]) -> ModuleList:
        """Add several modules at the end."""
        for m in modules:
            self.append(m)
        return self

    def __getitem__(self, index: int) -> Module:
        mods = list(self._modules.values())
        try:
            return mods[index]
        except IndexError:
            raise IndexError(f"ModuleList has {len(mods)} modules; no index {index}") from None

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise TraceError("a ModuleList has no forward(); call its modules from the model's "
                         "forward (for m in self.blocks: x = m(x))")


__all__ = ["ModuleList", "Sequential"]
