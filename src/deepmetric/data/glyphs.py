"""``glyphs``: Han characters rendered from Debian's fonts, a many-class unseen-class benchmark.

Each class is one Han character; its images are that character drawn by different TYPEFACES (designs).
Nothing is downloaded: the characters come from a standard (the 3,755 level-1 hanzi of GB 2312, decoded
from the byte range with Python's ``gb2312`` codec, in code order, which is pinyin order) and the fonts are
Debian packages (``make glyphs`` installs them with apt, then runs the generator).

Counting typefaces, not files (see :data:`TYPEFACES`):

* one typeface = one design. Files or faces that carry the same design count once: the regional faces of a
  .ttc (Noto CJK JP/KR/SC/TC/HK, AR PL UMing CN/HK/TW), proportional and mono variants (IPAPGothic,
  WenQuanYi Micro Hei Mono, LXGW WenKai Mono), derivatives (WenQuanYi Micro Hei from Droid Sans Fallback,
  IPAex from IPA, AR PL UMing/UKai from the AR PL Big5/GB fonts, LXGW WenKai from Klee One, BabelStone Han's
  GB glyphs from AR PL SungtiL GB). Such faces are listed as candidates of one typeface: a character is drawn
  by the first candidate that really has it. Noto CJK and Source Han are the same design; only Noto is
  packaged here, and a Source Han face found on the machine would be a candidate of the same typeface.
* weights of one family do NOT count as distinct typefaces: only the regular face is used. A bold face is
  the same design with thicker strokes, which the ``glyphs`` training transform already varies (stroke
  thickness), and near-duplicate images of one design would make nearest-neighbour retrieval easy for the
  wrong reason.

Missing glyphs are detected from the font itself, never by eye (:func:`glyph_status`): a character is
skipped by a face when the face's cmap lacks it, maps it to glyph 0 (.notdef), maps it to a glyph that
another requested character also maps to (a shared fallback box), renders no ink, or renders exactly the
bitmap of the face's .notdef glyph.

Dataset layout written by :func:`generate` (the project's CSV format, :mod:`deepmetric.data.csv_dataset`)::

    <root>/df.csv           label,path,split,char,typeface  (label = index of the character in the list)
    <root>/images/<label>/<typeface>.png   size×size grayscale, white glyph on black, centred on its ink
    <root>/manifest.json    parameters, fonts used, expected counts per split, skipped glyphs

Splits are class-disjoint (the zero-shot protocol): the first half of the characters is the training half,
the second half is ``test``; the last ``val_fraction`` of the training half is ``val``. Characters drawn by
fewer than ``min_typefaces`` typefaces are left out (listed in the manifest). The output is deterministic:
the same fonts, parameters and Pillow/FreeType versions give the same bytes.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from deepmetric.data.base import DatasetError
from deepmetric.data.csv_dataset import CSVDataset
from deepmetric.registry import DATASETS

#: Where ``make glyphs`` writes the dataset and where ``data.dataset: glyphs`` looks when data.root is unset.
DEFAULT_ROOT = Path("data/glyphs")
#: Font folders scanned by default (Debian installs fonts under /usr/share/fonts).
DEFAULT_FONT_DIRS = (Path("/usr/share/fonts"),)
FONT_SUFFIXES = (".ttf", ".otf", ".ttc", ".otc")
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
#: Number of level-1 hanzi in GB 2312 (rows 0xB0-0xD7 of 94 cells, minus 5 empty cells at the end of 0xD7).
LEVEL1_COUNT = 3755


def level1_hanzi() -> List[str]:
    """The 3,755 level-1 hanzi of GB 2312 in code order (rows 0xB0–0xD7, cells 0xA1–0xFE).

    Decoded with Python's ``gb2312`` codec; the 5 cells 0xD7FA–0xD7FE are unassigned and skipped.
    """
    chars = []
    for row in range(0xB0, 0xD8):
        for cell in range(0xA1, 0xFF):
            if row == 0xD7 and cell > 0xF9:
                continue
            chars.append(bytes([row, cell]).decode("gb2312"))
    if len(chars) != LEVEL1_COUNT or len(set(chars)) != LEVEL1_COUNT:
        raise RuntimeError(f"GB 2312 level 1 decoded to {len(chars)} characters ({len(set(chars))} distinct), expected {LEVEL1_COUNT}")
    return chars


@dataclass(frozen=True)
class Typeface:
    """One design; ``faces`` are (family, style) name-table entries that carry it, in preference order."""

    key: str
    package: str
    faces: Tuple[Tuple[str, str], ...]
    note: str = ""


#: The typefaces of the benchmark and the Debian packages that ship them (see the module docstring for
#: why several faces form one typeface). Faces are matched by the font's own family and style names.
TYPEFACES: Tuple[Typeface, ...] = (
    Typeface("noto_sans_cjk", "fonts-noto-cjk", (("Noto Sans CJK SC", "Regular"), ("Source Han Sans SC", "Regular")), "Noto Sans CJK = Source Han Sans"),
    Typeface("noto_serif_cjk", "fonts-noto-cjk", (("Noto Serif CJK SC", "Regular"), ("Source Han Serif SC", "Regular")), "Noto Serif CJK = Source Han Serif"),
    Typeface("arphic_ming", "fonts-arphic-uming fonts-arphic-gbsn00lp fonts-arphic-bsmi00lp fonts-babelstone-han",
             (("AR PL UMing CN", "Light"), ("AR PL SungtiL GB", "Regular"), ("AR PL Mingti2L Big5", "Regular"), ("BabelStone Han", "Regular")),
             "UMing is built from Arphic's SungtiL GB and Mingti2L Big5; BabelStone Han's GB glyphs derive from them"),
    Typeface("arphic_kai", "fonts-arphic-ukai fonts-arphic-gkai00mp fonts-arphic-bkai00mp",
             (("AR PL UKai CN", "Book"), ("AR PL KaitiM GB", "Regular"), ("AR PL KaitiM Big5", "Regular")),
             "UKai is built from Arphic's KaitiM GB and KaitiM Big5"),
    Typeface("wqy_zenhei", "fonts-wqy-zenhei", (("WenQuanYi Zen Hei", "Regular"), ("WenQuanYi Zen Hei", "Medium"))),
    Typeface("droid_sans_fallback", "fonts-droid-fallback fonts-wqy-microhei",
             (("Droid Sans Fallback", "Regular"), ("WenQuanYi Micro Hei", "Regular")), "WenQuanYi Micro Hei derives from Droid Sans Fallback"),
    Typeface("ipa_gothic", "fonts-ipafont-gothic fonts-ipaexfont-gothic", (("IPAGothic", "Regular"), ("IPAexGothic", "Regular")), "IPAex derives from IPA"),
    Typeface("ipa_mincho", "fonts-ipafont-mincho fonts-ipaexfont-mincho", (("IPAMincho", "Regular"), ("IPAexMincho", "Regular")), "IPAex derives from IPA"),
    Typeface("hanazono", "fonts-hanazono", (("HanaMinA", "Regular"),)),
    Typeface("kiloji", "fonts-kiloji", (("kiloji", "Regular"),), "handwriting; kiloji B/D/P are variants of it"),
    Typeface("klee", "fonts-lxgw-wenkai fonts-klee", (("LXGW WenKai", "Regular"), ("Klee One", "Regular")), "LXGW WenKai derives from Klee One"),
    Typeface("tw_kai", "fonts-cns11643-kai", (("TW-Kai", "Regular"),)),
    Typeface("tw_sung", "fonts-cns11643-sung", (("TW-Sung", "Regular"),)),
    Typeface("cwtex_fangsong", "fonts-cwtex-fs", (("cwTeXFangSong", "Medium"),)),
    Typeface("cwtex_heibold", "fonts-cwtex-heib", (("cwTeXHeiBold", "Medium"),)),
    Typeface("cwtex_kai", "fonts-cwtex-kai", (("cwTeXKai", "Medium"),)),
    Typeface("cwtex_ming", "fonts-cwtex-ming", (("cwTeXMing", "Medium"),)),
)


def font_packages(typefaces: Sequence[Typeface] = TYPEFACES) -> List[str]:
    """The Debian packages that ship ``typefaces`` (what ``make glyphs`` installs), sorted."""
    return sorted({p for t in typefaces for p in t.package.split()})


@dataclass(frozen=True)
class FontFace:
    """One face of a font file (a .ttc holds several, numbered from 0)."""

    path: Path
    index: int
    family: str
    style: str


def find_faces(font_dirs: Iterable[Path] = DEFAULT_FONT_DIRS) -> List[FontFace]:
    """Every face of every font file under ``font_dirs``, with the family and style names of its name table.

    Files fontTools cannot parse are skipped (they cannot be checked, so they are never used).
    """
    from fontTools.ttLib import TTCollection, TTFont, TTLibError

    faces = []
    files = sorted({p for d in font_dirs for p in Path(d).rglob("*") if p.suffix.lower() in FONT_SUFFIXES and p.is_file()})
    for path in files:
        try:
            fonts = TTCollection(str(path), lazy=True).fonts if path.suffix.lower() in (".ttc", ".otc") else [TTFont(str(path), lazy=True)]
            for i, font in enumerate(fonts):
                name = font["name"]
                faces.append(FontFace(path, i, str(name.getBestFamilyName()), str(name.getBestSubFamilyName())))
        except (TTLibError, OSError, KeyError, AssertionError, ValueError):
            continue
    return faces


def resolve_typefaces(typefaces: Sequence[Typeface], faces: Sequence[FontFace]) -> Dict[str, List[FontFace]]:
    """typeface key -> its candidate faces present among ``faces``, in the typeface's preference order."""
    by_name: Dict[Tuple[str, str], FontFace] = {}
    for f in faces:
        by_name.setdefault((f.family, f.style), f)  # sorted paths: the first file wins, deterministically
    return {t.key: [by_name[n] for n in t.faces if n in by_name] for t in typefaces}


# --------------------------------------------------------------------------------------------- rendering
def render_glyph(font: Any, char: str, size: int, *, em_fraction: float = 0.8, margin: int = 2) -> Image.Image:
    """``char`` drawn by a PIL ``FreeTypeFont`` as a size×size "L" image: white ink on black, centred on its ink.

    The font is used at ``em_fraction × size`` pixels per em, so relative glyph sizes are kept across
    characters and typefaces; a glyph whose ink box is larger than ``size − 2·margin`` is scaled down to fit.
    An image without ink is returned all black.
    """
    from PIL import ImageDraw

    canvas = Image.new("L", (4 * size, 4 * size), 0)  # room for glyphs up to 5 em wide: never clipped
    ImageDraw.Draw(canvas).text((2 * size, 2 * size), char, fill=255, font=font, anchor="mm")
    out = Image.new("L", (size, size), 0)
    box = canvas.getbbox()
    if box is None:
        return out
    ink = canvas.crop(box)
    w, h = ink.size
    room = size - 2 * margin
    if max(w, h) > room:
        s = room / max(w, h)
        ink = ink.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
        w, h = ink.size
    out.paste(ink, ((size - w) // 2, (size - h) // 2))
    return out


#: More code points than this on one glyph make it a fallback glyph (see FaceGlyphs).
MAX_CODEPOINTS_PER_GLYPH = 8
#: A code point no font maps (the last noncharacter of plane 16): PIL draws the face's .notdef glyph for it.
_NOTDEF_PROBE = "\U0010FFFF"


class FaceGlyphs:
    """One face opened for rendering, with the cmap facts that decide which glyphs it really has.

    Args:
        face: the face to open.
        chars: the characters that will be requested (to find glyphs shared by several of them).
        size: image side in pixels.
    """

    def __init__(self, face: FontFace, chars: Sequence[str], size: int) -> None:
        from fontTools.ttLib import TTFont
        from PIL import ImageFont

        self.face = face
        self.size = size
        tt = TTFont(str(face.path), fontNumber=face.index, lazy=True)
        self.cmap: Dict[int, str] = dict(tt.getBestCmap() or {})
        self.notdef_name = tt.getGlyphOrder()[0]
        requested: Dict[str, int] = {}
        for ch in chars:
            g = self.cmap.get(ord(ch))
            if g is not None:
                requested[g] = requested.get(g, 0) + 1
        anywhere: Dict[str, int] = {}
        for g in self.cmap.values():
            anywhere[g] = anywhere.get(g, 0) + 1
        # A glyph drawn for two requested characters, or for many code points, is a fallback, not a design of
        # one character (a unified ideograph may legitimately share its glyph with a radical or a
        # compatibility code point: a handful of code points, never MAX_CODEPOINTS_PER_GLYPH).
        self.shared = {g for g, n in requested.items() if n > 1 or anywhere[g] > MAX_CODEPOINTS_PER_GLYPH}
        tt.close()
        self.font = ImageFont.truetype(str(face.path), size=max(1, round(0.8 * size)), index=face.index)
        self.notdef = np.asarray(render_glyph(self.font, _NOTDEF_PROBE, size))

    def status(self, char: str) -> Tuple[str, Optional[Image.Image]]:
        """("ok", image) or (reason, None); reasons: missing, notdef, shared, empty, box (see :func:`glyph_status`)."""
        return glyph_status(self, char)


def glyph_status(face: FaceGlyphs, char: str) -> Tuple[str, Optional[Image.Image]]:
    """Whether ``face`` really has ``char``, decided from its cmap and its .notdef glyph.

    Returns ("ok", image) or one of ("missing" — not in the cmap, "notdef" — mapped to glyph 0, "shared" —
    mapped to a glyph another requested character, or more than MAX_CODEPOINTS_PER_GLYPH code points, also
    map to, "empty" — no ink, "box" — the same bitmap
    as the face's .notdef glyph) with None.
    """
    g = face.cmap.get(ord(char))
    if g is None:
        return "missing", None
    if g == face.notdef_name:
        return "notdef", None
    if g in face.shared:
        return "shared", None
    image = render_glyph(face.font, char, face.size)
    pixels = np.asarray(image)
    if not pixels.any():
        return "empty", None
    if face.notdef.any() and np.array_equal(pixels, face.notdef):
        return "box", None
    return "ok", image


# --------------------------------------------------------------------------------------------- generator
def split_of(position: int, n_chars: int, val_fraction: float) -> str:
    """The split of the character at ``position`` in a list of ``n_chars``: first half train/val, second test.

    The training half is the first ``n_chars // 2``; its last ``round(val_fraction × half)`` are ``val``.
    """
    half = n_chars // 2
    if position >= half:
        return "test"
    n_val = int(round(val_fraction * half))
    return "val" if position >= half - n_val else "train"


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class _Plan:
    chars: List[str]
    images: Dict[int, List[Tuple[str, Image.Image]]] = field(default_factory=dict)
    skipped: Dict[str, Dict[str, int]] = field(default_factory=dict)
    drawn: Dict[str, int] = field(default_factory=dict)


def generate(out: Path, *, size: int = 64, chars: Optional[Sequence[str]] = None, limit: Optional[int] = None,
             typefaces: Sequence[Typeface] = TYPEFACES, font_dirs: Sequence[Path] = DEFAULT_FONT_DIRS,
             val_fraction: float = 0.2, min_typefaces: int = 4,
             progress: Optional[Callable[[int, int], None]] = None) -> Dict[str, Any]:
    """Render the glyphs dataset into ``out`` (layout in the module docstring); return its manifest.

    Args:
        out: dataset folder; must be absent, empty, or an earlier glyphs dataset (which is replaced).
        size: image side in pixels.
        chars: the character list (default: :func:`level1_hanzi`); classes keep this order.
        limit: use only the first ``limit`` characters of the list (a smaller benchmark, same protocol).
        typefaces: the designs to draw with (default :data:`TYPEFACES`).
        font_dirs: folders scanned for font files.
        val_fraction: share of the training half held out as the class-disjoint ``val`` split.
        min_typefaces: characters drawn by fewer typefaces are left out (at least 2: a query needs a positive).
        progress: called as ``progress(done, total)`` after each character.

    Raises:
        ValueError: a bad argument (named with its value).
        FileNotFoundError: no font of ``typefaces`` is installed (run ``make glyphs``).
        FileExistsError: ``out`` holds files that are not a glyphs dataset.
    """
    out = Path(out)
    if size < 8:
        raise ValueError(f"size={size} is too small to draw a character; use at least 8 (default 64)")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be in [0, 1)")
    if min_typefaces < 2:
        raise ValueError(f"min_typefaces={min_typefaces} must be at least 2 (a query needs another image of its class)")
    chars = list(level1_hanzi() if chars is None else chars)
    if limit is not None:
        if limit < 4:
            raise ValueError(f"limit={limit} must be at least 4 characters (two per half)")
        chars = chars[:limit]
    if len(set(chars)) != len(chars):
        dup = sorted({c for c in chars if chars.count(c) > 1})
        raise ValueError(f"the character list repeats {dup[:10]}; each character must appear once")
    keys = [t.key for t in typefaces]
    if len(set(keys)) != len(keys):
        raise ValueError(f"typeface keys repeat: {keys}")
    candidates = resolve_typefaces(typefaces, find_faces(font_dirs))
    present = {k: v for k, v in candidates.items() if v}
    if not present:
        raise FileNotFoundError(
            f"no font of the glyphs typefaces is installed under {', '.join(map(str, font_dirs))}; run `make glyphs` "
            f"(apt-get install {' '.join(font_packages(typefaces))})"
        )
    _prepare_out(out)

    plan = _Plan(chars)
    opened = {k: [FaceGlyphs(f, chars, size) for f in faces] for k, faces in present.items()}
    for k in present:
        plan.skipped[k] = {r: 0 for r in ("missing", "notdef", "shared", "empty", "box")}
        plan.drawn[k] = 0
    for pos, ch in enumerate(chars):
        drawn = []
        for t in typefaces:
            if t.key not in opened:
                continue
            reasons = []
            for fg in opened[t.key]:
                reason, image = fg.status(ch)
                if image is not None:
                    drawn.append((t.key, image))
                    plan.drawn[t.key] += 1
                    break
                reasons.append(reason)
            else:
                plan.skipped[t.key][reasons[0]] += 1  # the preferred face's reason
        plan.images[pos] = drawn
        if progress is not None:
            progress(pos + 1, len(chars))

    rows = []
    dropped = []
    counts = {s: {"images": 0, "classes": 0} for s in SPLITS}
    for pos, ch in enumerate(chars):
        drawn = plan.images[pos]
        if len(drawn) < min_typefaces:
            dropped.append({"label": pos, "char": ch, "typefaces": len(drawn)})
            continue
        split = split_of(pos, len(chars), val_fraction)
        counts[split]["classes"] += 1
        folder = out / "images" / f"{pos:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for key, image in drawn:
            rel = f"images/{pos:04d}/{key}.png"
            (out / rel).write_bytes(_png_bytes(image))
            rows.append((pos, rel, split, ch, key))
            counts[split]["images"] += 1
    for s in SPLITS:
        if counts[s]["classes"] < (2 if s != "val" or val_fraction > 0 else 0):
            raise ValueError(
                f"split {s!r} has {counts[s]['classes']} characters with at least {min_typefaces} typefaces; use more "
                f"characters (limit), a lower min_typefaces, or install more fonts (make glyphs)"
            )
    with open(out / "df.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["label", "path", "split", "char", "typeface"])
        w.writerows(rows)
    import PIL

    from PIL import features

    manifest = {
        "format": FORMAT_VERSION,
        "characters": "GB 2312 level-1 hanzi" if list(chars) == level1_hanzi()[: len(chars)] else "custom list",
        "n_characters": len(chars),
        "size": size,
        "val_fraction": val_fraction,
        "min_typefaces": min_typefaces,
        "counts": counts,
        "typefaces": [
            {"key": t.key, "package": t.package, "images": plan.drawn.get(t.key, 0), "skipped": plan.skipped.get(t.key),
             "faces": [{"file": str(f.path), "index": f.index, "family": f.family, "style": f.style, "sha256": _sha256(f.path)}
                       for f in present.get(t.key, [])]}
            for t in typefaces
        ],
        "missing_typefaces": [t.key for t in typefaces if t.key not in present],
        "dropped_characters": dropped,
        "software": {"pillow": PIL.__version__, "freetype": features.version("freetype2")},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file; give a folder for the glyphs dataset")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MANIFEST).is_file() and not (out / "df.csv").is_file():
            raise FileExistsError(f"{out} is not empty and holds no glyphs dataset (no {MANIFEST}); choose an empty or new folder")
        # An earlier glyphs dataset: replace it (its manifest goes first, so a crash leaves no valid-looking dataset).
        (out / MANIFEST).unlink(missing_ok=True)
        (out / "df.csv").unlink(missing_ok=True)
        shutil.rmtree(out / "images", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def check(root: Path = DEFAULT_ROOT) -> Dict[str, Any]:
    """Verify a generated dataset against the counts its generator wrote; return the manifest.

    Checks the per-split image and class counts of df.csv against manifest.json and that every listed image
    file exists. Raises :class:`DatasetError` saying what differs (regenerate with ``make glyphs``).
    """
    root = Path(root)
    mpath, cpath = root / MANIFEST, root / "df.csv"
    for p in (mpath, cpath):
        if not p.is_file():
            raise DatasetError(f"glyphs: {p} not found; generate the dataset with `make glyphs` (or `deepmetric glyphs generate --out {root}`)")
    manifest = json.loads(mpath.read_text(encoding="utf-8"))
    found: Dict[str, Dict[str, Any]] = {s: {"images": 0, "classes": set()} for s in SPLITS}
    missing = []
    with open(cpath, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            s = row["split"]
            if s not in found:
                raise DatasetError(f"glyphs: {cpath} has split {s!r}; expected one of {SPLITS}. Regenerate with `make glyphs`")
            found[s]["images"] += 1
            found[s]["classes"].add(row["label"])
            if not (root / row["path"]).is_file():
                missing.append(row["path"])
    problems = []
    for s in SPLITS:
        want = manifest["counts"][s]
        got = {"images": found[s]["images"], "classes": len(found[s]["classes"])}
        if got != want:
            problems.append(f"split {s!r}: manifest says {want['images']} images in {want['classes']} classes, df.csv lists {got['images']} in {got['classes']}")
    if missing:
        problems.append(f"{len(missing)} image file(s) listed in df.csv are missing, e.g. {missing[0]}")
    if problems:
        raise DatasetError(f"glyphs dataset {root} is incomplete: " + "; ".join(problems) + ". Regenerate it with `make glyphs`.")
    return manifest


@DATASETS.register("glyphs")
class Glyphs(CSVDataset):
    """The glyphs dataset (module docstring): grayscale images, one class per Han character.

    Splits: ``train``, ``val`` (class-disjoint hold-out of the training half), ``test`` (the second half
    of the characters, never trained on). ``class_names`` are the characters. ``root`` defaults to
    :data:`DEFAULT_ROOT` (where ``make glyphs`` writes it).
    """

    mode = "L"

    def __init__(self, root: Any = None, split: str = "train", transform: Optional[Callable] = None, *, strict: bool = False) -> None:
        root = Path(DEFAULT_ROOT if root is None else root)
        if not (root / "df.csv").is_file():
            raise DatasetError(
                f"glyphs: no dataset at {root} (df.csv not found); generate it with `make glyphs` (installs Debian's Han "
                f"fonts and writes {DEFAULT_ROOT}) or `deepmetric glyphs generate --out {root}`"
            )
        if split not in SPLITS:
            raise ValueError(f"glyphs: unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        super().__init__(root, split, transform, strict=strict)
        chars: Dict[int, str] = {}
        with open(self.csv_path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                chars[int(row["label"])] = row["char"]
        self.class_names = [chars[int(c)] for c in self.class_names]

    def check(self) -> "Glyphs":
        """Verify this split against the counts in the generator's manifest (see :func:`check`)."""
        manifest = check(self.root)
        want = manifest["counts"][self.split]
        if (len(self), self.num_classes) != (want["images"], want["classes"]):
            raise DatasetError(f"glyphs split {self.split!r}: expected {want['images']} images in {want['classes']} classes, found {len(self)} in {self.num_classes}")
        return self
