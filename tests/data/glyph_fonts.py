"""Tiny TrueType fonts built by the tests themselves (fontTools' FontBuilder), so the glyphs generator is
tested on Han code points without any installed Han font.

Each glyph is a set of filled rectangles on a 1000-unit em. :func:`make_font` maps characters to shapes and
can also plant the faults the generator must detect: a character mapped to .notdef, two characters sharing
one glyph, a glyph with no outline, and a glyph that draws exactly the .notdef box.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

Rect = Tuple[int, int, int, int]  # x0, y0, x1, y1 in font units (em = 1000, baseline at y = 0)

#: The .notdef glyph: a hollow box, as most fonts draw it.
NOTDEF: List[Rect] = [(100, 0, 900, 60), (100, 740, 900, 800), (100, 0, 160, 800), (840, 0, 900, 800)]


def shape(seed: int) -> List[Rect]:
    """A distinct filled pattern for each ``seed`` (bars whose count and thickness depend on it)."""
    bars = 1 + seed % 4
    thick = 60 + 40 * ((seed // 4) % 4)
    vertical = (seed // 16) % 2 == 1
    rects = []
    for b in range(bars):
        lo = 100 + b * (700 // bars)
        rects.append((lo, 100, lo + thick, 700) if vertical else (150, lo, 850, lo + thick))
    rects.append((100 + (seed * 53) % 600, 100 + (seed * 31) % 500, 250 + (seed * 53) % 600, 250 + (seed * 31) % 500))
    return rects


def _glyph(rects: Sequence[Rect]):
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    pen = TTGlyphPen(None)
    for x0, y0, x1, y1 in rects:
        pen.moveTo((x0, y0))
        pen.lineTo((x0, y1))
        pen.lineTo((x1, y1))
        pen.lineTo((x1, y0))
        pen.closePath()
    return pen.glyph()


def make_font(path: Path, family: str, glyphs: Dict[str, Optional[List[Rect]]], *, style: str = "Regular",
              to_notdef: Sequence[str] = (), shared: Sequence[str] = (), box: Sequence[str] = (),
              fallback: Sequence[str] = ()) -> Path:
    """Write a .ttf named ``family``/``style`` to ``path``.

    Args:
        glyphs: character -> its rectangles (None or [] = a glyph without outline).
        to_notdef: characters whose cmap entry points at .notdef (glyph 0).
        shared: characters that all map to ONE glyph (a fallback shape, not .notdef).
        box: characters mapped to a glyph that draws the .notdef box.
        fallback: characters that all map to one more shape (another shared glyph).
    """
    from fontTools.fontBuilder import FontBuilder

    order = [".notdef"]
    outlines = {".notdef": _glyph(NOTDEF)}
    cmap: Dict[int, str] = {}
    for i, (ch, rects) in enumerate(glyphs.items()):
        name = f"g{i}"
        order.append(name)
        outlines[name] = _glyph(rects or [])
        cmap[ord(ch)] = name
    for ch in to_notdef:
        cmap[ord(ch)] = ".notdef"
    if shared:
        order.append("fallback")
        outlines["fallback"] = _glyph([(200, 200, 800, 600)])
        for ch in shared:
            cmap[ord(ch)] = "fallback"
    if fallback:
        order.append("fallback2")
        outlines["fallback2"] = _glyph([(300, 100, 700, 700)])
        for ch in fallback:
            cmap[ord(ch)] = "fallback2"
    if box:
        order.append("boxcopy")
        outlines["boxcopy"] = _glyph(NOTDEF)
        for ch in box:
            cmap[ord(ch)] = "boxcopy"
    fb = FontBuilder(1000, isTTF=True)
    fb.setupGlyphOrder(order)
    fb.setupCharacterMap(cmap)
    fb.setupGlyf(outlines)
    fb.setupHorizontalMetrics({g: (1000, 0) for g in order})
    fb.setupHorizontalHeader(ascent=880, descent=-120)
    fb.setupNameTable({"familyName": family, "styleName": style})
    fb.setupOS2(sTypoAscender=880, sTypoDescender=-120, usWinAscent=880, usWinDescent=120)
    fb.setupPost()
    path.parent.mkdir(parents=True, exist_ok=True)
    fb.save(str(path))
    return path


def make_glyphs_dataset(root: Path, *, n_chars: int = 16, n_typefaces: int = 4, size: int = 16) -> Path:
    """A glyphs dataset in the generator's exact layout, drawn by ``n_typefaces`` test fonts over the first
    ``n_chars`` level-1 hanzi (half train/val, half test). Returns the dataset folder."""
    from deepmetric.data.glyphs import Typeface, generate, level1_hanzi

    chars = level1_hanzi()[:n_chars]
    fonts = root / "fonts"
    typefaces = []
    for t in range(n_typefaces):
        make_font(fonts / f"t{t}.ttf", f"Test {t}", {c: shape(i + 37 * t) for i, c in enumerate(chars)})
        typefaces.append(Typeface(f"t{t}", "none", ((f"Test {t}", "Regular"),)))
    out = root / "glyphs"
    generate(out, size=size, chars=chars, typefaces=typefaces, font_dirs=[fonts], val_fraction=0.5, min_typefaces=2)
    return out
