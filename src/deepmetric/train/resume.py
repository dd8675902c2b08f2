"""What a resumed run may change in its config: only keys that leave the optimisation it continues intact.

A resumed run continues the stored optimisation exactly (model, optimizer and sampler states). A config
that differs elsewhere (say ``optim.lr`` or ``loss.name``) would be silently ignored or crash half-way, so
:func:`check_resume_config` refuses it with one line naming every differing key and both values.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

from deepmetric.config import ConfigError, RunConfig, build_config

#: Dotted keys that may differ from the stored config on
#: ``--resume``: a longer run (``train.epochs``; the lr schedule then spans the new length), where the data
#: lives, how many loader workers read it (augmentations are seeded per item, so the images are the same),
#: the device, and how the run reports itself.
MAY_CHANGE_ON_RESUME: Tuple[str, ...] = (
    "name",
    "device",
    "data.root",
    "data.num_workers",
    "train.epochs",
    "train.progress",
    "train.log_every",
    "train.report",
    "train.checkpoint_every_steps",
    "train.monitor_split",
    "train.monitor_every",
    "eval.batch_size",
)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(stored: Mapping[str, Any], new: Mapping[str, Any]) -> List[Tuple[str, Any, Any]]:
    """(dotted key, stored value, new value) for every key whose value differs, sorted by key."""
    a, b = _flatten(stored), _flatten(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check_resume_config(stored: Mapping[str, Any], cfg: RunConfig, *, source: str) -> None:
    """Refuse to resume the run whose checkpoint ``source`` stores config ``stored`` with ``cfg`` when they
    differ outside :data:`MAY_CHANGE_ON_RESUME`.

    The stored config is validated first (defaults filled in), so a key added to the config schema since
    the run started is not a difference unless it is set to a non-default value.

    Raises:
        ConfigError: one line naming each refused key with its stored and new value.
    """
    old = build_config(dict(stored), source=f"{source} (stored config)")
    diffs = [(k, a, b) for k, a, b in config_differences(old.to_dict(), cfg.to_dict()) if k not in MAY_CHANGE_ON_RESUME]
    if diffs:
        listed = "; ".join(f"{k}: stored {a!r}, now {b!r}" for k, a, b in diffs)
        raise ConfigError(
            f"--resume: the config differs from the one {source} was trained with ({listed}); resume with the run's "
            f"config.yaml or start a new run folder (on resume only {', '.join(MAY_CHANGE_ON_RESUME)} may change)"
        )
