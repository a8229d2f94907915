"""Result tables that save and load as JSON (everything) and CSV (the rows, for spreadsheets).

Each result of the comparison (:class:`~autodiff_lab.compare.measure.AccuracyResult`,
:class:`~autodiff_lab.compare.measure.SpeedResult`,
:class:`~autodiff_lab.compare.scaling.ScalingResult`) is a dataclass with a list of row
dataclasses in ``rows`` and a few fields that describe the table (the case, the reference
...). :class:`ResultTable` gives them the same file methods:

    result.save_json("accuracy.json");  AccuracyResult.load_json("accuracy.json") == result
    result.save_csv("accuracy.csv");    AccuracyResult.load_csv("accuracy.csv", **meta)

CSV holds the rows only (one line per row, empty cells for missing numbers); the other
fields come from the JSON file or are given to ``load_csv``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="ResultTable")


def _jsonable(v: Any) -> Any:
    """Plain JSON types; NaN and infinities as strings (JSON has none)."""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "item") and callable(v.item):  # numpy scalars
        return _jsonable(v.item())
    return v


def _allowed_types(annotation: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _coerce(value: Any, annotation: Any) -> Any:
    """A JSON or CSV cell back to the field's type (``float | None`` etc.)."""
    allowed = _allowed_types(annotation)
    if value is None or (value == "" and type(None) in allowed):
        return None
    for t in allowed:
        origin = typing.get_origin(t) or t
        if origin is bool:
            return value if isinstance(value, bool) else str(value).strip().lower() == "true"
        if origin is int and not isinstance(value, bool):
            try:
                return int(value)
            except (TypeError, ValueError):
                continue
        if origin is float:
            try:
                return float(value)
            except (TypeError, ValueError):
                continue
        if origin is str:
            return str(value)
        if origin in (list, tuple):
            if isinstance(value, str):
                value = json.loads(value) if value.startswith("[") else [value]
            return list(value) if origin is list else tuple(value)
        if origin is dict:
            return json.loads(value) if isinstance(value, str) else dict(value)
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def row_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """A row dataclass from a dict of (possibly string) cells; unknown keys are ignored."""
    hints = _hints(cls)
    kwargs = {f.name: _coerce(data[f.name], hints[f.name])
              for f in dataclasses.fields(cls) if f.name in data}
    return cls(**kwargs)


class ResultTable:
    """File methods for a dataclass with ``rows`` (a list of ``ROW`` dataclasses)."""

    ROW: ClassVar[type]
    rows: list[Any]

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON types (rows as lists of dicts)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out[f.name] = [_jsonable(dataclasses.asdict(r)) for r in v] if f.name == "rows" \
                else _jsonable(v)
        return out

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        """The inverse of :meth:`to_dict`."""
        hints = _hints(cls)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name not in data:
                continue
            if f.name == "rows":
                kwargs["rows"] = [row_from_dict(cls.ROW, r) for r in data["rows"]]
            else:
                kwargs[f.name] = _coerce(data[f.name], hints[f.name])
        return cls(**kwargs)

    def meta(self) -> dict[str, Any]:
        """The fields other than ``rows`` (what ``load_csv`` needs to rebuild the table)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)  # type: ignore[arg-type]
                if f.name != "rows"}

    def save_json(self, path: str | Path) -> Path:
        """Write the whole table as JSON; returns the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def load_json(cls: type[T], path: str | Path) -> T:
        """Read a table written by :meth:`save_json`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def save_csv(self, path: str | Path) -> Path:
        """Write the rows as CSV (a header of field names, one line per row)."""
        path = Path(path)
        names = [f.name for f in dataclasses.fields(self.ROW)]
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(names)
            for r in self.rows:
                cells = []
                for n in names:
                    v = _jsonable(getattr(r, n))
                    cells.append("" if v is None else json.dumps(v) if isinstance(v, (list, dict))
                                 else repr(v) if isinstance(v, float) else str(v).lower()
                                 if isinstance(v, bool) else v)
                writer.writerow(cells)
        return path

    @classmethod
    def load_csv(cls: type[T], path: str | Path, **meta: Any) -> T:
        """Rows from a CSV written by :meth:`save_csv`; the other fields from ``meta``."""
        with Path(path).open(newline="") as fh:
            rows = [row_from_dict(cls.ROW, r) for r in csv.DictReader(fh)]
        return cls(rows=rows, **meta)  # type: ignore[call-arg]
