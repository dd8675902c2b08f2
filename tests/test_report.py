"""Run reports: the three PNGs exist and show something; the helpers they rest on compute the right things."""
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from deepmetric.cli import app
from deepmetric.report import pick_queries, plot_curves, read_metrics, write_report


def image_stats(path):
    im = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    return im.shape, im.std(), len(np.unique(im.reshape(-1, 3), axis=0))


def test_report_cli_makes_three_non_trivial_images(tiny_run):
    r = CliRunner().invoke(app, ["report", str(tiny_run), "--max-points", "200"])
    assert r.exit_code == 0, r.output
    files = {name: tiny_run / "report" / f"{name}.png" for name in ("curves", "retrieval", "embedding_map")}
    for name, path in files.items():
        assert f"{name}: {path}" in r.output.replace("\n", "")
        (h, w, _), std, colours = image_stats(path)
        assert h >= 300 and w >= 400, (name, h, w)
        assert std > 10 and colours > 50, (name, std, colours)  # not a blank canvas
    # The retrieval grid (8 queries x 8 neighbours) frames each neighbour green (same class) or red.
    grid = np.asarray(Image.open(files["retrieval"]).convert("RGB")).reshape(-1, 3)
    green = np.all(grid == (0x1A, 0x96, 0x41), axis=1).sum()
    red = np.all(grid == (0xD7, 0x19, 0x1C), axis=1).sum()
    assert green + red > 64 * 50  # every one of the 64 neighbour frames is drawn


def test_report_without_checkpoint_draws_curves_only(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [json.dumps({"split": "train", "epoch": 1, "step": s, "loss": 5.0 / s, "lr": 0.1}) for s in range(1, 41)]
    lines.append(json.dumps({"split": "val", "epoch": 1, "step": 40, "recall@1": 0.5}))
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"split": "tr')  # torn last line (killed run)
    assert len(read_metrics(run / "metrics.jsonl")) == 41
    files = write_report(run)
    assert list(files) == ["curves"] and image_stats(files["curves"])[1] > 10
    with pytest.raises(FileNotFoundError, match="neither metrics.jsonl nor a checkpoint"):
        write_report(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "nope")


def test_pick_queries_covers_classes_in_turn_and_is_seeded():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 7)
    q = pick_queries(labels, 7, seed=3)
    assert len(set(q.tolist())) == 7 and np.bincount(labels[q]).tolist() == [3, 2, 2]
    assert q.tolist() == pick_queries(labels, 7, seed=3).tolist()
    assert pick_queries(labels, 50).size == 20  # never more than there are items


def test_plot_curves_without_validation_has_two_panels(tmp_path):
    recs = [{"split": "train", "epoch": 1, "step": s, "loss": 1.0, "lr": 0.01} for s in range(1, 5)]
    one = plot_curves(recs, tmp_path / "a.png")
    two = plot_curves(recs + [{"split": "val", "epoch": 1, "step": 4, "map@r": 0.2}], tmp_path / "b.png")
    assert Image.open(one).size[0] < Image.open(two).size[0]  # the validation panel adds width


def test_han_class_names_are_drawn_with_an_installed_cjk_font(tmp_path):
    """Glyphs class names are Han characters: with a CJK font installed (make glyph-fonts) no character is
    drawn as a missing-glyph box; the default family stays first for Latin text."""
    import warnings

    from deepmetric.report import CJK_FAMILIES, font_families

    import shutil
    import subprocess

    fams = font_families()
    assert fams[0] == "DejaVu Sans" and len(fams) <= 2 and all(f in CJK_FAMILIES for f in fams[1:])
    fc = shutil.which("fc-list")
    system_han = fc and any(n in subprocess.run([fc, ":lang=zh", "family"], capture_output=True, text=True).stdout
                            for n in CJK_FAMILIES)
    if not system_han:
        pytest.skip("no CJK font of CJK_FAMILIES installed (make glyph-fonts installs them)")
    assert len(fams) == 2, f"fontconfig has a CJK family of {CJK_FAMILIES} but the report would not use it: {fams}"
    records = [{"split": "train", "epoch": 1, "step": s, "loss": 1.0 / s, "lr": 0.1} for s in range(1, 5)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_curves(records, tmp_path / "c.png", title="字体 run")
    missing = [str(w.message) for w in caught if "missing from font" in str(w.message)]
    assert not missing, missing
