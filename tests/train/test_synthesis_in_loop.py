"""The training loop really drives the synthesisers: SEE expands on the released per-epoch schedule.

A tiny run on scikit-learn's 8x8 digits (seconds on CPU) with a spy on SEE's forward: the number of
expanded samples per step must be the released count for that epoch (Leminhbinh0209/PAKDD24-SEE,
trainer/sphericalexpansion.py, transcribed here with numpy), and it must become non-zero. A loop that
passed no epoch (or progress=0) would leave SEE at ρ = 0 or fail.
"""
import numpy as np
import pytest

from deepmetric.config import build_config
from deepmetric.synthesis.spherical_expansion import SphericalExpansion
from deepmetric.train.loop import train

TINY = {
    "device": "cpu",
    "data": {"dataset": "digits", "image_size": 8, "batch_size": 24, "samples_per_class": 8},
    "model": {"backbone": "small_cnn", "embedding_dim": 16},
    "train": {"epochs": 3, "max_steps_per_epoch": 2, "progress": False, "log_every": 1, "report": False, "val_every": 3},
    "eval": {"nmi": False},
}


def released_count(batch, epoch, epochs, lo=0.0, hi=0.4):
    rho = hi - (hi - lo) * ((np.cos(np.pi * min(epoch, 200) / min(epochs, 200)) + 1.0) / 2.0)
    return int(np.round(batch * rho))


def test_loop_drives_see_once_per_epoch_with_the_released_count(tmp_path, monkeypatch):
    seen = []
    real_forward = SphericalExpansion.forward

    def spy(self, embeddings, labels, *, generator=None, proxies=None, progress=0.0, epoch=None, epochs=None):
        out = real_forward(self, embeddings, labels, generator=generator, proxies=proxies, progress=progress, epoch=epoch,
                           epochs=epochs)
        seen.append((epoch, epochs, len(labels), int(out.is_synthetic.sum()) // self.n))
        return out

    monkeypatch.setattr(SphericalExpansion, "forward", spy)
    cfg = build_config(TINY, ["loss.name=proxy_anchor", "synthesis.name=see", "synthesis.params={n: 2}"])
    train(cfg, tmp_path / "run")
    assert [s[:2] for s in seen] == [(0, 3), (0, 3), (1, 3), (1, 3), (2, 3), (2, 3)]
    expanded = [s[3] for s in seen]
    assert expanded == [released_count(b, e, n) for e, n, b, _ in seen]
    assert expanded[-1] == 7  # round(24 · 0.3): SEE is really on by the last epoch


def test_a_list_of_synthesisers_builds_one_composed_loss_and_the_single_form_still_works():
    from deepmetric.config import ConfigError
    from deepmetric.losses.synthesis_loss import ComposedSynthesisLoss, SynthesisLoss
    from deepmetric.train.loop import build_training_loss

    listed = build_config({**TINY, "synthesis": [{"name": "see", "params": {"n": 2}, "weight": 0.3},
                                                 {"name": "symmetrical"}]})
    loss = build_training_loss(listed, num_classes=5, embedding_dim=16)
    assert isinstance(loss, ComposedSynthesisLoss)
    assert [type(p.synthesiser).__name__ for p in loss.parts] == ["SphericalExpansion", "SymmetricalSynthesis"]
    assert [p.weight for p in loss.parts] == [0.3, None] and loss.parts[0].synthesiser.n == 2
    single = build_training_loss(build_config(TINY, ["synthesis.name=see"]), num_classes=5, embedding_dim=16)
    assert isinstance(single, SynthesisLoss) and single.weight == 0.2
    assert build_config(TINY, []).synthesisers() == []
    with pytest.raises(ConfigError, match="synthesis\\[1\\] has no name"):
        build_config({**TINY, "synthesis": [{"name": "see"}, {"weight": 0.5}]})
    with pytest.raises(ConfigError, match="synthesis\\[0\\].name"):
        build_config({**TINY, "synthesis": [{"name": "nope"}, {"name": "see"}]})
