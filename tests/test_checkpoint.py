"""Checkpoints: atomic writes, a content hash checked on load (damaged bytes are refused), clear errors."""
import hashlib
import io
import os
import zipfile

import pytest
import torch
from typer.testing import CliRunner

from deepmetric.checkpoint import CheckpointError, check_compatible, load_checkpoint, save_checkpoint
from deepmetric.cli import app


def test_atomic_save_leaves_no_temp_and_roundtrips(tmp_path):
    p = tmp_path / "c.pt"
    save_checkpoint({"model": {"w": torch.arange(3)}, "config": {"a": 1}}, p)
    save_checkpoint({"model": {"w": torch.arange(4)}, "config": {"a": 2}}, p)
    assert os.listdir(tmp_path) == ["c.pt"]
    assert load_checkpoint(p)["model"]["w"].tolist() == [0, 1, 2, 3]


def test_failed_save_keeps_previous_file(tmp_path):
    p = tmp_path / "c.pt"
    save_checkpoint({"model": {}, "config": {"v": 1}}, p)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        save_checkpoint({"model": {}, "config": {}, "x": Boom()}, p)
    assert load_checkpoint(p)["config"] == {"v": 1}
    assert os.listdir(tmp_path) == ["c.pt"]


def test_bad_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a deepmetric checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"embedding_dim: checkpoint 64 vs config 32"):
        check_compatible({"model_signature": {"embedding_dim": 64}}, {"embedding_dim": 32}, "x.pt")


def _state():
    g = torch.Generator().manual_seed(0)
    return {"model": {"w": torch.randn(64, 32, generator=g), "b": torch.randn(32, generator=g)}, "config": {"name": "x"}}


def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def test_file_carries_the_sha256_of_its_payload(tmp_path):
    p = tmp_path / "c.pt"
    state = _state()
    save_checkpoint(state, p)
    outer = torch.load(p, weights_only=True)  # the envelope is plain data
    payload = outer["payload"].numpy().tobytes()
    assert outer["sha256"] == hashlib.sha256(payload).hexdigest() and len(outer["sha256"]) == 64
    inner = torch.load(io.BytesIO(payload), weights_only=False)  # the payload is the state, as torch.save wrote it
    assert torch.equal(inner["model"]["w"], state["model"]["w"])
    back = load_checkpoint(p)
    assert torch.equal(back["model"]["w"], state["model"]["w"]) and back["config"] == {"name": "x"}


def test_damaged_tensor_bytes_are_refused(tmp_path):
    p = tmp_path / "c.pt"
    state = _state()
    save_checkpoint(state, p)
    # Find the weight tensor's bytes inside the file and damage one in the middle of them.
    raw = p.read_bytes()
    w_bytes = state["model"]["w"].numpy().tobytes()
    at = raw.find(w_bytes)
    assert at > 0
    _flip_byte(p, at + len(w_bytes) // 2)
    with pytest.raises(CheckpointError, match=r"is damaged: the SHA-256 of its content is [0-9a-f]{12}… but [0-9a-f]{12}… was stored"):
        load_checkpoint(p)


@pytest.mark.parametrize("where", [0.02, 0.5, 0.98])
def test_damage_anywhere_is_one_clear_error(tmp_path, where):
    p = tmp_path / "c.pt"
    save_checkpoint(_state(), p)
    _flip_byte(p, int(p.stat().st_size * where))
    with pytest.raises(CheckpointError, match="damaged") as err:
        load_checkpoint(p)
    assert "\n" not in str(err.value)


def test_plain_torch_save_files_load_after_their_zip_checksums(tmp_path):
    # Checkpoints written before the hash existed: torch.load ignores the zip CRCs; load_checkpoint checks them.
    p = tmp_path / "old.pt"
    state = _state()
    torch.save(state, p)
    assert torch.equal(load_checkpoint(p)["model"]["w"], state["model"]["w"])
    with zipfile.ZipFile(p) as z:
        member = next(i for i in z.infolist() if i.file_size == state["model"]["w"].numel() * 4)
        offset = member.header_offset + 30 + len(member.filename.encode()) + len(member.extra)
    _flip_byte(p, offset + 100)
    torch.load(p, weights_only=False)  # what used to happen: loads silently
    with pytest.raises(CheckpointError, match="damaged: the checksum of its member"):
        load_checkpoint(p)


def test_damaged_checkpoint_is_one_line_exit_2_through_the_cli(tmp_path):
    p = tmp_path / "c.pt"
    state = _state()
    save_checkpoint(state, p)
    raw = p.read_bytes()
    _flip_byte(p, raw.find(state["model"]["w"].numpy().tobytes()) + 8)
    for args in (["eval", "--checkpoint", str(p)], ["index", "build", "--checkpoint", str(p), "--out", str(tmp_path / "idx")],
                 ["export", "--checkpoint", str(p), "--out", str(tmp_path / "m.onnx")]):
        r = CliRunner().invoke(app, args)
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and "is damaged" in lines[0], (args, r.output)
    assert not (tmp_path / "idx").exists()
