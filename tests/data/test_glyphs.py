"""The glyphs dataset: character list, splits, cmap-based glyph detection, generator, manifest check, adapter.

Fonts are built by the tests (tests/data/glyph_fonts.py) so that the Han path runs on any machine; the
Debian fonts are used when present (DejaVu, on a bare image, as Latin stand-in classes; the Han fonts after
``make glyphs``), and those tests skip with the reason otherwise.
"""
from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont

from deepmetric.data.base import DatasetError
from deepmetric.data.glyphs import (TYPEFACES, FaceGlyphs, FontFace, Glyphs, Typeface, check, find_faces, font_packages, generate,
                                    level1_hanzi, render_glyph, resolve_typefaces, split_of)

sys.path.insert(0, str(Path(__file__).parent))
from glyph_fonts import make_font, shape  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------ characters
def test_level1_hanzi_is_the_gb2312_level1_block_in_code_order():
    chars = level1_hanzi()
    assert len(chars) == 3755 and len(set(chars)) == 3755
    assert chars[0] == "啊" and chars[1] == "阿" and chars[-1] == "座"  # 0xB0A1, 0xB0A2, 0xD7F9
    codes = [c.encode("gb2312") for c in chars]
    assert codes == sorted(codes)  # code order
    assert all(0xB0 <= b[0] <= 0xD7 and 0xA1 <= b[1] <= 0xFE for b in codes)
    assert all(0x4E00 <= ord(c) <= 0x9FFF for c in chars)  # CJK Unified Ideographs
    # The five cells after 0xD7F9 are the only empty ones of the 40 rows.
    for cell in range(0xFA, 0xFF):
        with pytest.raises(UnicodeDecodeError):
            bytes([0xD7, cell]).decode("gb2312")
    assert 40 * 94 - 5 == len(chars)


@pytest.mark.parametrize("n, val_fraction, expected", [
    (10, 0.2, "TTTTVSSSSS"),     # half 5, round(0.2 * 5) = 1 val
    (11, 0.2, "TTTTVSSSSSS"),    # odd: the test half gets the extra character
    (8, 0.0, "TTTTSSSS"),
    (12, 0.5, "TTTVVVSSSSSS"),
])
def test_split_is_first_half_train_then_val_second_half_test(n, val_fraction, expected):
    code = {"train": "T", "val": "V", "test": "S"}
    assert "".join(code[split_of(i, n, val_fraction)] for i in range(n)) == expected


# ------------------------------------------------------------------------------------------ glyph detection
@pytest.fixture
def faulty_font(tmp_path):
    chars = "中国人大小山水"
    # 木 alone among the requested characters, but its glyph also serves 8 unrequested code points
    make_font(tmp_path / "fonts" / "faulty.ttf", "Faulty", {"中": shape(1), "国": shape(2), "人": None},
              to_notdef="大", shared="小山", box="水", fallback="木ABCDEFGH")
    return FaceGlyphs(find_faces([tmp_path / "fonts"])[0], list(chars) + ["火", "木"], 32)


def test_glyph_status_detects_each_kind_of_fake_glyph_from_the_cmap(faulty_font):
    status = {c: faulty_font.status(c)[0] for c in "中国人大小山水火木"}
    assert status["中"] == status["国"] == "ok"
    assert status["人"] == "empty"      # mapped, but the glyph has no outline
    assert status["大"] in ("notdef", "missing")  # mapped to glyph 0 (fontTools may drop such a cmap entry)
    assert status["小"] == status["山"] == "shared"  # two characters, one fallback glyph
    assert status["水"] == "box"        # a glyph that draws the .notdef box
    assert status["火"] == "missing"    # not in the cmap at all
    assert status["木"] == "shared"     # not requested by another character, but its glyph serves 9 code points
    ok, image = faulty_font.status("中")
    assert image.size == (32, 32) and image.mode == "L" and np.asarray(image).max() == 255


def test_render_glyph_centres_the_ink_and_scales_down_only_when_it_does_not_fit(tmp_path):
    # One centred square of 400 units, one off-centre bar, one huge glyph larger than the em.
    path = make_font(tmp_path / "r.ttf", "R", {"a": [(300, 200, 700, 600)], "b": [(0, 0, 100, 800)], "c": [(-400, -400, 1400, 1400)]})
    font = ImageFont.truetype(str(path), size=40)
    for ch in "abc":
        im = np.asarray(render_glyph(font, ch, 50, em_fraction=0.8, margin=2)) > 127
        ys, xs = np.nonzero(im)
        # the ink box is centred (within a pixel of rounding)
        assert abs((xs.min() + xs.max()) / 2 - 24.5) <= 1 and abs((ys.min() + ys.max()) / 2 - 24.5) <= 1
        assert xs.min() >= 2 and ys.min() >= 2 and xs.max() <= 47 and ys.max() <= 47
    a = np.asarray(render_glyph(font, "a", 50)) > 127
    side = a.any(axis=0).sum()
    assert abs(side - 16) <= 1  # 400 units of a 1000-unit em at 40 px/em = 16 px: kept at its size
    c = np.asarray(render_glyph(font, "c", 50)) > 127
    assert c.any(axis=0).sum() == 46  # 1800 units = 72 px would overflow: scaled to size - 2 * margin


# ------------------------------------------------------------------------------------------ generator
HAN = level1_hanzi()[:12]


def _test_typefaces(tmp_path):
    """Three designs over the first 12 level-1 hanzi; 'ab' has two candidate faces (A preferred, B fills in)."""
    fonts = tmp_path / "fonts"
    make_font(fonts / "a.ttf", "Test A", {c: shape(i) for i, c in enumerate(HAN) if i % 3 != 0})  # lacks 0, 3, 6, 9
    make_font(fonts / "b.ttf", "Test B", {c: shape(40 + i) for i, c in enumerate(HAN)})
    make_font(fonts / "c.ttf", "Test C", {c: shape(80 + i) for i, c in enumerate(HAN) if i < 10}, shared=HAN[10:])
    make_font(fonts / "d.ttf", "Test D", {c: shape(120 + i) for i, c in enumerate(HAN) if i < 10})  # lacks 10, 11
    make_font(fonts / "e.ttf", "Test D", {c: shape(7) for c in HAN}, style="Bold")  # a weight: never used
    typefaces = (
        Typeface("ab", "pkg-a pkg-b", (("Test A", "Regular"), ("Test B", "Regular"))),
        Typeface("c", "pkg-c", (("Test C", "Regular"),)),
        Typeface("d", "pkg-d", (("Test D", "Regular"),)),
        Typeface("absent", "pkg-z", (("Not Installed", "Regular"),)),
    )
    return fonts, typefaces


def test_generate_writes_the_csv_layout_with_counted_typefaces_and_disjoint_splits(tmp_path):
    fonts, typefaces = _test_typefaces(tmp_path)
    out = tmp_path / "glyphs"
    m = generate(out, size=24, chars=HAN, typefaces=typefaces, font_dirs=[fonts], val_fraction=0.4, min_typefaces=3)
    rows = list(csv.DictReader(open(out / "df.csv", encoding="utf-8")))
    by_char = {}
    for r in rows:
        by_char.setdefault(r["char"], []).append(r["typeface"])
    # ab draws all 12 (B fills A's gaps); c and d lack 10, 11 (c maps both to one shared glyph) -> 1 typeface each
    assert set(by_char) == set(HAN[:10])
    assert all(v == ["ab", "c", "d"] for v in by_char.values())
    assert [d["char"] for d in m["dropped_characters"]] == [HAN[10], HAN[11]]
    # half = 6 -> train 0..3 (round(0.4 * 6) = 2 val: 4, 5), test 6..11 minus the dropped 10, 11
    split = {r["char"]: r["split"] for r in rows}
    assert [split[c] for c in HAN[:10]] == ["train"] * 4 + ["val"] * 2 + ["test"] * 4
    assert m["counts"] == {"train": {"images": 12, "classes": 4}, "val": {"images": 6, "classes": 2}, "test": {"images": 12, "classes": 4}}
    assert m["characters"] == "GB 2312 level-1 hanzi" and m["n_characters"] == 12
    ab = next(t for t in m["typefaces"] if t["key"] == "ab")
    assert [f["family"] for f in ab["faces"]] == ["Test A", "Test B"] and ab["images"] == 12
    c = next(t for t in m["typefaces"] if t["key"] == "c")
    assert c["skipped"]["shared"] == 2 and c["images"] == 10
    assert m["missing_typefaces"] == ["absent"]
    # labels are positions in the character list; images are size x size grayscale files
    assert {int(r["label"]) for r in rows} == set(range(10))
    im = Image.open(out / rows[0]["path"])
    assert im.size == (24, 24) and im.mode == "L"
    # the first candidate face draws what it has: char 1 comes from A (shape 1), char 0 from B (shape 40)
    a1 = np.asarray(Image.open(out / "images/0001/ab.png"))
    b0 = np.asarray(Image.open(out / "images/0000/ab.png"))
    fa = FaceGlyphs(FontFace(fonts / "a.ttf", 0, "Test A", "Regular"), HAN, 24)
    fb = FaceGlyphs(FontFace(fonts / "b.ttf", 0, "Test B", "Regular"), HAN, 24)
    assert np.array_equal(a1, np.asarray(fa.status(HAN[1])[1])) and np.array_equal(b0, np.asarray(fb.status(HAN[0])[1]))
    assert check(out) == m


def test_generate_is_byte_for_byte_deterministic(tmp_path):
    fonts, typefaces = _test_typefaces(tmp_path)
    a, b = tmp_path / "one", tmp_path / "two"
    for out in (a, b):
        generate(out, size=20, chars=HAN, typefaces=typefaces, font_dirs=[fonts], min_typefaces=2, val_fraction=0.4)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    # regenerating over an earlier dataset replaces it with the same bytes
    generate(a, size=20, chars=HAN, typefaces=typefaces, font_dirs=[fonts], min_typefaces=2, val_fraction=0.4)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)


def test_check_names_what_differs_from_the_manifest(tmp_path):
    fonts, typefaces = _test_typefaces(tmp_path)
    out = tmp_path / "g"
    generate(out, size=16, chars=HAN, typefaces=typefaces, font_dirs=[fonts], min_typefaces=2, val_fraction=0.4)
    victim = next((out / "images").rglob("*.png"))
    victim.unlink()
    with pytest.raises(DatasetError, match=r"1 image file\(s\) listed in df.csv are missing.*make glyphs"):
        check(out)
    lines = (out / "df.csv").read_text(encoding="utf-8").splitlines()
    (out / "df.csv").write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")  # drop the last (test) row
    with pytest.raises(DatasetError, match=r"split 'test': manifest says \d+ images in \d+ classes, df.csv lists"):
        check(out)
    (out / "manifest.json").unlink()
    with pytest.raises(DatasetError, match="manifest.json not found; generate the dataset with `make glyphs`"):
        check(out)


def test_generate_refuses_bad_arguments_and_foreign_folders(tmp_path):
    fonts, typefaces = _test_typefaces(tmp_path)
    kw = dict(chars=HAN, typefaces=typefaces, font_dirs=[fonts], val_fraction=0.4)
    with pytest.raises(ValueError, match="size=4"):
        generate(tmp_path / "o", size=4, **kw)
    with pytest.raises(ValueError, match="min_typefaces=1"):
        generate(tmp_path / "o", min_typefaces=1, **kw)
    with pytest.raises(ValueError, match="repeats"):
        generate(tmp_path / "o", chars=HAN + HAN[:1], typefaces=typefaces, font_dirs=[fonts])
    with pytest.raises(ValueError, match="split 'train' has 0 characters with at least 5 typefaces"):
        generate(tmp_path / "o", min_typefaces=5, **kw)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds no glyphs dataset"):
        generate(foreign, **kw)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(FileNotFoundError, match="make glyphs"):
        generate(tmp_path / "o", chars=HAN, typefaces=typefaces, font_dirs=[tmp_path / "empty"])


def test_glyphs_dataset_reads_the_generated_csv_with_characters_as_class_names(tmp_path):
    fonts, typefaces = _test_typefaces(tmp_path)
    out = tmp_path / "g"
    m = generate(out, size=16, chars=HAN, typefaces=typefaces, font_dirs=[fonts], val_fraction=0.4, min_typefaces=3)
    train, val, test = (Glyphs(out, s) for s in ("train", "val", "test"))
    assert train.class_names == HAN[:4] and val.class_names == HAN[4:6] and test.class_names == HAN[6:10]
    assert not set(train.class_names) & set(test.class_names)
    assert (len(test), test.num_classes) == (m["counts"]["test"]["images"], 4)
    image, label = test[0]
    assert image.mode == "L" and image.size == (16, 16) and label == 0
    assert test.check() is test
    with pytest.raises(DatasetError, match=r"make glyphs"):
        Glyphs(tmp_path / "nowhere", "train")
    with pytest.raises(ValueError, match="unknown split 'trainval'"):
        Glyphs(out, "trainval")


def test_every_typeface_is_one_design_and_the_makefile_installs_its_packages():
    keys = [t.key for t in TYPEFACES]
    assert len(set(keys)) == len(keys)
    faces = [f for t in TYPEFACES for f in t.faces]
    assert len(set(faces)) == len(faces)  # a face belongs to one typeface only
    # one weight per design: no face is a Bold/SemiBold/Heavy of its family (UMing's only face is "Light")
    assert not [f for f in faces if re.search(r"bold|heavy|black", f[1], re.I)]
    makefile = (ROOT / "Makefile").read_text()
    listed = re.search(r"^GLYPH_FONTS\s*:?=\s*(.+)$", makefile, re.M)
    assert listed is not None, "Makefile lacks GLYPH_FONTS"
    assert sorted(listed.group(1).split()) == font_packages()


# ------------------------------------------------------------------------------------------ installed fonts
def test_dejavu_latin_letters_as_stand_in_classes_on_a_bare_machine(tmp_path):
    faces = find_faces()
    dejavu = [Typeface(k, "fonts-dejavu-core", ((fam, "Book"),)) for k, fam in (("sans", "DejaVu Sans"), ("serif", "DejaVu Serif"), ("mono", "DejaVu Sans Mono"))]
    present = resolve_typefaces(dejavu, faces)
    if sum(bool(v) for v in present.values()) < 2:
        pytest.skip("fewer than two DejaVu faces installed (Debian's fonts-dejavu-core)")
    m = generate(tmp_path / "latin", size=32, chars=list("ABCDEFGH中"), typefaces=dejavu, min_typefaces=2, val_fraction=0.5)
    assert [d["char"] for d in m["dropped_characters"]] == ["中"]  # DejaVu has no Han: skipped by its cmap
    assert all(t["skipped"]["missing"] == 1 for t in m["typefaces"] if t["faces"])
    n = sum(bool(v) for v in present.values())
    assert m["counts"]["train"]["classes"] + m["counts"]["val"]["classes"] == 4 and m["counts"]["test"]["classes"] == 4
    assert m["counts"]["test"]["images"] == 4 * n


def test_installed_han_fonts_draw_the_first_level1_characters(tmp_path):
    present = {k: v for k, v in resolve_typefaces(TYPEFACES, find_faces()).items() if v}
    if len(present) < 2:
        pytest.skip("fewer than two Han typefaces installed; `make glyphs` installs Debian's Han fonts")
    m = generate(tmp_path / "han", size=32, limit=8, min_typefaces=2, val_fraction=0.5)
    rows = list(csv.DictReader(open(tmp_path / "han" / "df.csv", encoding="utf-8")))
    assert [c for c in dict.fromkeys(r["char"] for r in rows)] == level1_hanzi()[:8]
    per_char = {}
    for r in rows:
        per_char[r["char"]] = per_char.get(r["char"], 0) + 1
    assert max(per_char.values()) <= len(present)
    assert json.loads((tmp_path / "han" / "manifest.json").read_text(encoding="utf-8")) == m
