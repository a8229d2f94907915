"""One result table for every benchmark: the same columns on the terminal, in JSON and in CSV.

Columns: workload, framework, metric, value, unit, ratio-to-ours, note. A row is one number
one framework measured on one workload ("ms per gradient", "relative error", "compile s" ...);
``ratio-to-ours`` is that framework's value divided by ours for the same workload and metric
(filled in by :meth:`Table.fill_ratios`; empty for ours and where either side is missing).
A peer that could not be imported is a row too, with no value and the note
``peer not installed``, so a table never silently drops a comparison, and a target checked
against it is never "met" (:func:`target_verdict`).

Adopting it in a benchmark script::

    from _table import Table                       # benchmarks/ is on sys.path when run
    table = Table("bench_tape", meta={"threads": 2})
    table.add("mlp", "ours", "ms per gradient", 1.23, "ms")
    table.add("mlp", "torch", "ms per gradient", 1.10, "ms")  # or:
    table.not_installed("mlp", "torch", "ms per gradient", "ms")
    # a wide record (bench_tape's rows: ours_ms, torch_ms, jax_ms) in one call:
    table.add_frameworks("dncnn", "ms per gradient", "ms", {"ours": 5.1, "torch": 4.0, "jax": None})
    table.fill_ratios()
    print(table.text())
    table.save(args.json)    # None: a new benchmarks/results/bench_tape-<time>.json (+ .csv)
    # targets: target_verdict(ratio, ok, peer_ran=..., peer="torch") is "met", "MISSED" or
    # "not checked: torch not installed"

Run from elsewhere (tests), import it by path: ``importlib`` on ``benchmarks/_table.py``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: the columns, in order, of every format
COLUMNS = ("workload", "framework", "metric", "value", "unit", "ratio_to_ours", "note")
#: the note of a peer that could not be imported
NOT_INSTALLED = "peer not installed"
#: the framework name of our own rows
OURS = "ours"
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    """One measured number (``value`` None: not measured, the note says why)."""

    workload: str
    framework: str
    metric: str
    value: float | None
    unit: str = ""
    ratio_to_ours: float | None = None
    note: str = ""

    def cells(self) -> list[str]:
        return [self.workload, self.framework, self.metric, _fmt(self.value), self.unit,
                "" if self.ratio_to_ours is None else f"{self.ratio_to_ours:.3g}", self.note]


def _fmt(v: float | None) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v)
    if v == 0:
        return "0"
    if not math.isfinite(v):
        return str(v)
    a = abs(v)
    return f"{v:.3g}" if 1e-3 <= a < 1e5 else f"{v:.2e}"


@dataclass
class Table:
    """Rows of one benchmark run, with what describes the run (``meta``: machine, load...)."""

    name: str
    rows: list[Row] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.meta.setdefault("benchmark", self.name)
        self.meta.setdefault("time", time.strftime("%Y-%m-%d %H:%M:%S"))
        self.meta.setdefault("python", platform.python_version())
        self.meta.setdefault("platform", platform.platform())
        if hasattr(os, "getloadavg"):
            self.meta.setdefault("load_average_start", [round(x, 2) for x in os.getloadavg()])

    # --- filling ------------------------------------------------------------------------
    def add(self, workload: str, framework: str, metric: str, value: float | None,
            unit: str = "", note: str = "") -> Row:
        """Append one measurement (``value`` None with a ``note`` when not measured)."""
        row = Row(workload, framework, metric, None if value is None else float(value), unit,
                  None, note)
        self.rows.append(row)
        return row

    def not_installed(self, workload: str, framework: str, metric: str, unit: str = "",
                      why: str = "") -> Row:
        """The row of a peer that could not be imported: no value, ``peer not installed``."""
        return self.add(workload, framework, metric, None, unit,
                        NOT_INSTALLED + (f" ({why})" if why else ""))

    def add_frameworks(self, workload: str, metric: str, unit: str,
                       values: Mapping[str, float | None], notes: Mapping[str, str] | None = None
                       ) -> list[Row]:
        """One row per framework from a wide record ({"ours": 1.2, "torch": 1.1, "jax": None}):
        a None value is a peer that did not run ("peer not installed" unless ``notes`` says
        otherwise)."""
        notes = notes or {}
        rows = []
        for framework, value in values.items():
            if value is None and framework != OURS and framework not in notes:
                rows.append(self.not_installed(workload, framework, metric, unit))
            else:
                rows.append(self.add(workload, framework, metric, value, unit,
                                     notes.get(framework, "")))
        return rows

    def fill_ratios(self, ours: str | Callable[[Row], str] = OURS) -> None:
        """ratio-to-ours = value ÷ our value for the same workload and metric. ``ours``: the
        framework name of our rows, or a function giving, for a peer's row, the framework
        of the row of ours to divide by (where we have several: ``ours (central)`` ...)."""
        pick = ours if callable(ours) else (lambda row: ours)
        for r in self.rows:
            if r.framework.startswith(OURS) or r.value is None:
                continue
            base = self.value(r.workload, pick(r), r.metric)
            if base:
                r.ratio_to_ours = r.value / base

    def value(self, workload: str, framework: str, metric: str) -> float | None:
        """The value of one row (None: absent or not measured)."""
        for r in self.rows:
            if (r.workload, r.framework, r.metric) == (workload, framework, metric):
                return r.value
        return None

    # --- output -------------------------------------------------------------------------
    def text(self) -> str:
        """The aligned table (numbers right-aligned, text left-aligned)."""
        head = [c.replace("_", "-") for c in COLUMNS]
        cells = [r.cells() for r in self.rows]
        widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(head)]
        right = {3, 5}

        def line(items: list[str]) -> str:
            return "  ".join(x.rjust(w) if i in right else x.ljust(w)
                             for i, (x, w) in enumerate(zip(items, widths))).rstrip()

        out = [line(head), "-" * len(line(head))]
        out += [line(c) for c in cells]
        return "\n".join(out)

    def as_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "columns": list(COLUMNS),
                "rows": [asdict(r) for r in self.rows]}

    def save(self, json_path: str | os.PathLike[str] | None = None, csv_too: bool = True
             ) -> tuple[Path, Path | None]:
        """Write the JSON (and a CSV beside it with the same columns); without a path, a new
        timestamped file under benchmarks/results/, so committed results are never
        overwritten. Returns both paths."""
        if hasattr(os, "getloadavg"):
            self.meta["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        path = Path(json_path) if json_path else default_path(self.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=1, default=_jsonable))
        csv_path = None
        if csv_too:
            csv_path = path.with_suffix(".csv")
            with csv_path.open("w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(COLUMNS)
                for r in self.rows:
                    w.writerow(["" if v is None else v for v in asdict(r).values()])
        return path, csv_path


def default_path(name: str) -> Path:
    """benchmarks/results/<name>-<YYYYmmdd-HHMMSS>.json (a new file every run)."""
    return RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def _jsonable(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def load(path: str | os.PathLike[str]) -> Table:
    """A table written by :meth:`Table.save` (JSON)."""
    data = json.loads(Path(path).read_text())
    meta = dict(data.get("meta", {}))
    table = Table(meta.get("benchmark", Path(path).stem), meta=meta)
    table.rows = [Row(**r) for r in data["rows"]]
    return table


def from_records(name: str, records: Iterable[Mapping[str, Any]],
                 meta: Mapping[str, Any] | None = None) -> Table:
    """A table from dicts with the column names (a bridge for scripts that build dicts)."""
    table = Table(name, meta=dict(meta or {}))
    for rec in records:
        table.rows.append(Row(**{c: rec.get(c, None if c in ("value", "ratio_to_ours") else "")
                                 for c in COLUMNS}))
    return table


def target_verdict(value: float | None, ok: Callable[[float], bool],
                   peer_ran: bool = True, peer: str = "the peer") -> str:
    """"met" / "MISSED" for a target on a ratio or value; "not checked: <peer> not installed"
    when the peer did not run (a target is never met against a peer that did not run)."""
    if not peer_ran:
        return f"not checked: {peer} not installed"
    if value is None:
        return "not checked: not measured"
    return "met" if ok(value) else "MISSED"


def try_import(name: str) -> tuple[Any, str]:
    """(module, "") or (None, why): a peer that does not import is reported, never raised."""
    import importlib
    try:
        return importlib.import_module(name), ""
    except Exception as exc:  # any import failure means the peer is not usable
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0][:120]


__all__ = ["COLUMNS", "NOT_INSTALLED", "OURS", "Row", "Table", "default_path", "from_records",
           "load", "target_verdict", "try_import"]
