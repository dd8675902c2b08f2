"""Every command's expected failures end in ONE line ("error: ...") and exit status 2, never a traceback."""
import pytest
from PIL import Image
from typer.testing import CliRunner

from deepmetric.cli import app


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_line(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert lines[0].startswith("error:"), result.output
    assert len(lines) <= 3, result.output  # one message (the terminal may wrap it)
    for needle in needles:
        assert needle in result.output.replace("\n", " ") or needle in result.output, result.output


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "notimage.png").write_text("plain text, not a PNG")
    Image.new("1", (8000, 6000)).save(root / "huge.png")  # 48 M pixels: over the 40 M query limit, tiny file
    (root / "afile").write_text("x")
    (root / "df.csv").write_text("label,path,split\n0,a.png,test\n1,b.png\n")  # row 3 lacks its split
    (root / "notarun").mkdir()
    return root


def test_search_refuses_a_non_image_and_an_oversized_query(digits_index, bad_files):
    _one_line(_run("search", "--index", digits_index, bad_files / "notimage.png"), "notimage.png", "not an image")
    _one_line(_run("search", "--index", digits_index, bad_files / "huge.png"), "8000×6000", "limit")
    _one_line(_run("search", "--index", digits_index, bad_files / "missing.png"), "does not exist")
    query = digits_index / "thumbs" / "000001.png"
    _one_line(_run("search", "--index", bad_files / "notarun", query), "notarun")


def test_index_build_out_pointing_at_a_file_and_a_csv_row_with_a_missing_field(tiny_run, bad_files):
    ckpt = tiny_run / "best.pt"
    _one_line(_run("index", "build", "--checkpoint", ckpt, "--out", bad_files / "afile"), "is a file")
    res = _run("index", "build", "--checkpoint", ckpt, "--split", "test", "--out", bad_files / "idx",
               "--set", "data.dataset=csv", "--set", f"data.root={bad_files / 'df.csv'}")
    _one_line(res, "line 3", "split")
    _one_line(_run("index", "build", "--checkpoint", bad_files / "none.pt", "--out", bad_files / "idx2"), "none.pt")


@pytest.mark.parametrize("command", [
    ["eval", "--checkpoint", "{bad}/none.pt"],
    ["embed", "--checkpoint", "{bad}/none.pt", "--out", "{bad}/e.npz"],
    ["export", "--checkpoint", "{bad}/none.pt", "--out", "{bad}/m.onnx"],
    ["eval", "--checkpoint", "{bad}/afile"],  # not a checkpoint at all
    ["train", "--config", "{bad}/nothere.yaml"],
    ["serve", "--index", "{bad}/notarun"],
    ["report", "{bad}/notarun"],
    ["demo", "--epochs", "0", "--out", "{bad}/demo"],
    ["calibrate", "--index", "{bad}/notarun"],
])
def test_each_command_with_bad_input_is_one_line(bad_files, command):
    _one_line(_run(*[part.format(bad=bad_files) for part in command]))


def test_embed_to_an_unwritable_place_and_export_in_an_unknown_format(tiny_run, bad_files):
    _one_line(_run("embed", "--checkpoint", tiny_run / "best.pt", "--out", bad_files / "afile" / "e.npz"), "afile")
    _one_line(_run("export", "--checkpoint", tiny_run / "best.pt", "--format", "tflite", "--out", bad_files / "m"), "tflite")


def test_help_and_list():
    res = _run("--help")
    assert res.exit_code == 0 and "<bool>" not in res.output and "--help" in res.output
    assert "<bool>" not in _run("train", "--help").output
    res = _run("list")
    assert res.exit_code == 0 and "losses:" in res.output and "losss" not in res.output


def test_list_and_help_import_no_heavy_library():
    # `deepmetric list` / `--help` should start in about the time of `import torch`: the libraries that
    # take seconds to import are imported only by the code that uses them (checked by name, not by time)
    import subprocess
    import sys

    code = ("import sys; from typer.testing import CliRunner; from deepmetric.cli import app; "
            "assert CliRunner().invoke(app, ['list']).exit_code == 0; "
            "heavy = ('torchvision', 'timm', 'faiss', 'pytorch_metric_learning', 'sklearn', 'scipy', 'matplotlib', "
            "'tensorboard', 'fastapi', 'uvicorn', 'onnx'); print(sorted(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
