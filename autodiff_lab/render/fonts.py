"""The font every drawing names, and checks that an SVG names only fonts that exist.

Graphviz lays a label out with the metrics of the font it is given and writes that name
into the SVG; a browser then draws the text with that font, or with a substitute when the
font is missing, and a wider substitute overflows the boxes measured for the other font.
Helvetica, Graphviz's habit, is missing on most Linux machines. Every drawing here names
**DejaVu Sans** instead: Debian/Ubuntu install it with Graphviz, matplotlib ships it,
graphviz-pure has its metrics built in (so it measures with the font it names), and SVGs
add the generic ``sans-serif`` after it for machines without it.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess

#: the font family of every drawing (Graphviz and matplotlib)
FONT_FAMILY = "DejaVu Sans"
#: CSS generic families: always available in a browser
GENERIC_FAMILIES = frozenset({"serif", "sans-serif", "monospace", "cursive", "fantasy",
                              "system-ui", "ui-sans-serif", "ui-serif", "ui-monospace"})

_ATTRIBUTE = re.compile(r'font-family="([^"]*)"')
_CSS = re.compile(r"font-family\s*:\s*([^;\"}]+)")
_CSS_SHORTHAND = re.compile(r"font\s*:\s*(?:[^;\"}]*?\d(?:px|pt|em|%)\s+)([^;\"}]+)")


def _split(families: str) -> list[str]:
    return [f.strip().strip("'\"").strip() for f in families.split(",") if f.strip()]


def svg_font_families(svg: str) -> set[str]:
    """Every font family an SVG names (attributes, CSS properties and ``font:`` shorthands)."""
    names: set[str] = set()
    for pattern in (_ATTRIBUTE, _CSS, _CSS_SHORTHAND):
        for match in pattern.finditer(svg):
            names.update(_split(match.group(1)))
    return {n for n in names if n}


def with_generic_fallback(svg: str, generic: str = "sans-serif") -> str:
    """``svg`` with ``generic`` appended to every font-family list that has no generic
    family, so a browser without the named font still draws a font of the same kind."""
    def fix(families: str, sep: str) -> str:
        parts = _split(families)
        if any(p.lower() in GENERIC_FAMILIES for p in parts):
            return families
        return families.rstrip() + sep + generic

    svg = _ATTRIBUTE.sub(lambda m: f'font-family="{fix(m.group(1), ",")}"', svg)
    return _CSS.sub(lambda m: "font-family: " + fix(m.group(1), ", "), svg)


@functools.lru_cache(maxsize=1)
def installed_families() -> frozenset[str] | None:
    """The font families installed on this machine (lower case), from ``fc-list`` plus the
    fonts matplotlib finds (it ships DejaVu Sans); ``None`` when neither can tell."""
    found: set[str] = set()
    fc_list = shutil.which("fc-list")
    if fc_list:
        try:
            done = subprocess.run([fc_list, ":", "family"], capture_output=True, timeout=30,
                                  check=False)
            for line in done.stdout.decode("utf-8", "replace").splitlines():
                found.update(f.strip().lower() for f in line.split(",") if f.strip())
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        from matplotlib import font_manager
        found.update(f.name.lower() for f in font_manager.fontManager.ttflist)
    except ImportError:
        pass
    return frozenset(found) if found else None


def missing_fonts(svg: str) -> list[str]:
    """The families ``svg`` names that are neither generic nor installed (empty when the
    installed fonts cannot be listed)."""
    installed = installed_families()
    if installed is None:
        return []
    return sorted(n for n in svg_font_families(svg)
                  if n.lower() not in GENERIC_FAMILIES and n.lower() not in installed)


@functools.lru_cache(maxsize=8)
def _face(family: str, bold: bool) -> object:
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    prop = font_manager.FontProperties(family=family, weight="bold" if bold else "normal")
    return FT2Font(font_manager.findfont(prop, fallback_to_default=True))


@functools.lru_cache(maxsize=4096)
def text_width_pt(text: str, size_pt: float, bold: bool = False,
                  family: str = FONT_FAMILY) -> float:
    """The width of ``text`` set in ``family`` at ``size_pt`` points, in points (measured
    with matplotlib's FreeType, so with the real font's glyphs)."""
    font = _face(family, bold)
    font.set_size(size_pt, 72)
    font.set_text(text, 0.0)
    width, _ = font.get_width_height()
    return width / 64.0


_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")
_SIZE = re.compile(r"point-size\s*=\s*['\"]([0-9.]+)['\"]")


def label_width_pt(label: str, default_size: float) -> float:
    """The width in points of the widest line of a Graphviz HTML-like label (the text
    between ``<`` and ``>``, lines split at ``<br/>``), each line measured in
    :data:`FONT_FAMILY` at its ``point-size`` (the largest on the line) and weight.

    Graphviz without a font library (graphviz-pure) estimates each byte of a non-ASCII
    character as a space, so ``×``, ``±`` and ``σ`` come out narrower than they are; a node
    given this width as its minimum holds its text whichever program lays it out."""
    import html

    body = label[1:-1] if label.startswith("<") and label.endswith(">") else label
    widest = 0.0
    for line in _BREAK.split(body):
        sizes = [float(x) for x in _SIZE.findall(line)]
        text = html.unescape(_TAG.sub("", line))
        if text.strip():
            bold = "<b>" in line.lower()
            widest = max(widest, text_width_pt(text, max(sizes, default=default_size), bold))
    return widest


def min_node_width(label: str, default_size: float, margin_in: float, shape: str = "box"
                   ) -> float:
    """The smallest node width (inches, Graphviz's ``width``) that holds ``label`` with
    ``margin_in`` on each side; an ellipse needs √2 times its text box."""
    inches = label_width_pt(label, default_size) / 72.0 + 2 * margin_in
    if shape in ("ellipse", "circle", "oval"):
        inches *= 2 ** 0.5
    return round(inches + 0.005, 2)


__all__ = ["FONT_FAMILY", "GENERIC_FAMILIES", "installed_families", "label_width_pt",
           "min_node_width", "missing_fonts", "svg_font_families", "text_width_pt", "with_generic_fallback"]
