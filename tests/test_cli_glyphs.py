"""`deepmetric glyphs generate|check` and `deepmetric demo --data glyphs`: thin commands over
deepmetric.data.glyphs; a missing dataset is one red line that says `make glyphs`."""
import sys
from pathlib import Path

from typer.testing import CliRunner

from deepmetric.cli import app
from deepmetric.data.glyphs import TYPEFACES, check, level1_hanzi

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
from glyph_fonts import make_font, shape  # noqa: E402


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_red_line(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output.strip().splitlines()[0].startswith("error:"), result.output
    for needle in needles:
        assert needle in result.output, result.output


def test_generate_then_check_with_fonts_named_like_the_catalogue(tmp_path):
    # Test fonts that carry the family names of three catalogue typefaces (two candidates of one of them).
    chars = level1_hanzi()[:10]
    names = [TYPEFACES[0].faces[0], TYPEFACES[1].faces[0], TYPEFACES[2].faces[0], TYPEFACES[2].faces[1]]
    for i, (family, style) in enumerate(names):
        make_font(tmp_path / "fonts" / f"f{i}.ttf", family, {c: shape(i * 20 + j) for j, c in enumerate(chars)}, style=style)
    out = tmp_path / "glyphs"
    res = invoke("glyphs", "generate", "--out", out, "--size", 24, "--limit", 10, "--min-typefaces", 2,
                 "--val-fraction", 0.4, "--font-dir", tmp_path / "fonts")
    assert res.exit_code == 0, res.output
    m = check(out)
    assert m["counts"]["test"] == {"images": 15, "classes": 5}  # 3 typefaces (the 4th font is a candidate, not a typeface)
    assert m["counts"]["train"]["classes"] == 3 and m["counts"]["val"]["classes"] == 2
    assert "3 typefaces" in res.output
    res = invoke("glyphs", "check", out)
    assert res.exit_code == 0 and "test" in res.output


def test_missing_dataset_is_one_red_line_that_says_make_glyphs(tmp_path):
    assert_one_red_line(invoke("glyphs", "check", tmp_path / "none"), "make glyphs")
    assert_one_red_line(invoke("demo", "--data", "glyphs", "--root", tmp_path / "none", "--out", tmp_path / "run"), "make glyphs")
    assert not (tmp_path / "run").exists()
    assert_one_red_line(invoke("demo", "--data", "cifar", "--out", tmp_path / "run"), "--data 'cifar'", "mnist or glyphs")


def test_generate_without_fonts_is_one_red_line(tmp_path):
    (tmp_path / "empty").mkdir()
    res = invoke("glyphs", "generate", "--out", tmp_path / "g", "--limit", 10, "--font-dir", tmp_path / "empty")
    assert_one_red_line(res, "make glyphs")
