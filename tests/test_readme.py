"""The README's Python tour runs as written, and the commands it names exist."""
import re
from pathlib import Path

from typer.testing import CliRunner

from deepmetric.cli import app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_python_tour_runs_as_written():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "the README has no Python tour"
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)  # noqa: S102 - our own README
    metrics = scope["metrics"]
    assert set(metrics) >= {"recall@1", "recall@8", "precision@1", "map@r", "r_precision", "nmi"}
    assert 0.0 <= scope["acc"] <= 1.0 and float(scope["loss"]) > 0


def test_every_cli_command_in_the_tour_exists():
    commands = set(re.findall(r"^deepmetric ([a-z]+(?: build)?)", README, flags=re.M))
    assert {"train", "eval", "embed", "list", "report", "index build", "search", "serve", "export"} <= commands
    for command in commands:
        res = CliRunner().invoke(app, [*command.split(), "--help"])
        assert res.exit_code == 0, (command, res.output)


def test_the_resume_line_resumes_the_folder_the_line_before_wrote():
    lines = [line.split("#")[0].split() for line in README.splitlines() if line.startswith("deepmetric train")]
    resumes = [i for i, words in enumerate(lines) if "--resume" in words]
    assert resumes
    for i in resumes:
        again = [w for w in lines[i] if w != "--resume"]
        assert i > 0 and lines[i - 1] == again, "the --resume line must repeat the training command it resumes"
        assert "--out" in again  # an explicit run folder, the same in both lines


def test_the_query_image_command_writes_a_png(tmp_path, monkeypatch):
    line = next(ln for ln in README.splitlines() if ln.startswith("python -c") and "query.png" in ln)
    code = re.search(r'python -c "(.*?)"', line).group(1)
    monkeypatch.chdir(tmp_path)
    exec(code, {})  # noqa: S102 - our own README
    from PIL import Image

    assert Image.open(tmp_path / "query.png").size == (28, 28)
