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
