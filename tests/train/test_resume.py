"""--resume continues the stored run or refuses, in one line, a config that differs outside the allow-list;
a refused resume leaves every file of the run folder as it was."""
import hashlib
import shutil

import pytest
from typer.testing import CliRunner

from deepmetric.checkpoint import load_checkpoint
from deepmetric.cli import app
from deepmetric.config import ConfigError, build_config, load_config
from deepmetric.train.loop import train
from deepmetric.train.resume import MAY_CHANGE_ON_RESUME, check_resume_config, config_differences

TINY = {
    "device": "cpu",
    "data": {"dataset": "digits", "image_size": 8, "batch_size": 24, "samples_per_class": 8},
    "model": {"backbone": "small_cnn", "embedding_dim": 16},
    "loss": {"name": "proxy_anchor"},
    "train": {"epochs": 1, "max_steps_per_epoch": 2, "progress": False, "log_every": 1, "report": False},
    "eval": {"nmi": False},
}


def snapshot(folder):
    """Every file under the folder with the SHA-256 of its bytes and its modification time."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "run"
    train(build_config(TINY), out)
    return out


def test_differences_are_listed_by_dotted_key():
    a = build_config(TINY).to_dict()
    b = build_config(TINY, ["optim.lr=0.5", "loss.params={margin: 0.2}"]).to_dict()
    assert config_differences(a, b) == [("loss.params.margin", None, 0.2), ("optim.lr", 0.001, 0.5)]
    assert config_differences(a, a) == []


def test_changed_lr_is_refused_naming_key_and_values(run_dir):
    stored = load_checkpoint(run_dir / "last.pt")["config"]
    with pytest.raises(ConfigError, match=r"optim\.lr: stored 0\.001, now 0\.5\).*config\.yaml"):
        check_resume_config(stored, build_config(TINY, ["optim.lr=0.5"]), source="last.pt")
    before = snapshot(run_dir)
    with pytest.raises(ConfigError, match=r"optim\.lr: stored 0\.001, now 0\.5"):
        train(build_config(TINY, ["optim.lr=0.5"]), run_dir, resume=True)
    assert snapshot(run_dir) == before


def test_changed_loss_is_one_line_exit_2_and_touches_nothing(run_dir, tmp_path):
    before = snapshot(run_dir)
    cfg = tmp_path / "other_loss.yaml"
    cfg.write_text(build_config(TINY, ["loss.name=multi_similarity"]).model_dump_json())
    r = CliRunner().invoke(app, ["train", "--config", str(cfg), "--out", str(run_dir), "--resume"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --resume"), r.output
    assert "loss.name: stored 'proxy_anchor', now 'multi_similarity'" in lines[0]
    assert snapshot(run_dir) == before


def test_allowed_changes_resume_and_are_recorded(run_dir, tmp_path):
    # A longer run, fewer log lines and a moved progress setting are fine: the optimisation continues.
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    assert {"train.epochs", "train.log_every", "data.num_workers"} <= set(MAY_CHANGE_ON_RESUME)
    res = train(build_config(TINY, ["train.epochs=2", "train.log_every=2"]), run, resume=True)
    assert load_checkpoint(run / "last.pt")["state"]["step"] == 4 and res["test"]
    assert load_config(run / "config.yaml").train.epochs == 2


def test_stored_config_without_a_newer_key_is_no_difference(run_dir):
    stored = load_checkpoint(run_dir / "last.pt")["config"]
    del stored["optim"]["gamma"]  # as if the key did not exist when the run started: its default applies
    check_resume_config(stored, build_config(TINY), source="last.pt")
