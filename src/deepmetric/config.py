"""Typed, strictly validated run configuration.

One YAML file describes one run. Unknown keys, wrong types and invalid choices are errors that name the
dotted path, the bad value and the valid choices (``ConfigError``); nothing is silently dropped.
``--set a.b=v`` overrides are parsed as YAML scalars and applied before validation. The resolved config
is saved in the run folder and inside every checkpoint.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the config."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Which data, how it is split, augmented and batched."""

    dataset: str = "mnist"
    root: Optional[str] = None
    train_split: str = "train"
    #: a split name; None (YAML ``null`` or ``none``): train on all training classes and keep the last
    #: epoch, the papers' protocol; or "holdout": the last ``holdout_fraction`` of the training classes
    #: become a class-disjoint validation split and are removed from training.
    val_split: Optional[str] = "val"
    holdout_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    test_split: str = "test"
    transform: str = "mnist"
    image_size: int = Field(28, gt=0)
    resize: Optional[int] = Field(None, gt=0)
    two_view: bool = False
    #: RandomResizedCrop scale range (min, max) of the training transform (fine_grained*, vit, imagenet);
    #: None keeps torchvision's (0.08, 1.0). SEE's DeiT recipes use (0.2, 1.0).
    crop_scale: Optional[Tuple[float, float]] = None
    sampler: Literal["m_per_class", "random"] = "m_per_class"
    #: per process; with N processes the loss sees N × batch_size (embeddings are gathered), so a
    #: 2-process recipe of 90 per process is batch_size 180 on one process.
    batch_size: int = Field(48, gt=1)
    #: images per class in a batch: m_per_class sampler only (an error with the random sampler, which
    #: would ignore it). Unset means 16, fitting the embedded MNIST demo's 3 training classes (3 × 16).
    samples_per_class: Optional[int] = Field(None, gt=0)
    num_workers: int = Field(0, ge=0)
    strict_images: bool = False
    neighbour_positives: float = Field(0.0, ge=0.0, le=1.0)
    #: where neighbour positives are searched each epoch: the L2-normalised pooled backbone features
    #: (the released CUB code's pool5) or the embedding the head produces.
    neighbour_space: Literal["backbone", "embedding"] = "backbone"
    max_train_items: Optional[int] = Field(None, gt=0)

    @model_validator(mode="after")
    def _default_samples_per_class(self) -> "DataConfig":
        if self.sampler == "m_per_class" and self.samples_per_class is None:
            self.__dict__["samples_per_class"] = 16  # direct: an assignment would re-run this validator
        return self

    @field_validator("val_split", mode="before")
    @classmethod
    def _none_means_no_validation(cls, v: Any) -> Any:
        return None if isinstance(v, str) and v.strip().lower() in ("none", "null") else v

    @field_validator("crop_scale")
    @classmethod
    def _crop_scale_range(cls, v: Optional[Tuple[float, float]]) -> Optional[Tuple[float, float]]:
        if v is not None and not 0.0 < v[0] <= v[1] <= 1.0:
            raise ValueError(f"crop_scale must be [min, max] with 0 < min <= max <= 1, got {list(v)}")
        return v


class ModelConfig(_Strict):
    """Backbone + embedding head."""

    backbone: str = "small_cnn"
    pretrained: Optional[str] = None
    embedding_dim: int = Field(64, gt=0)
    pooling: Literal["avg", "max", "avgmax", "gem"] = "avg"
    #: "bn"/"ln": BatchNorm1d/LayerNorm after the Linear layer; "pre_ln": LayerNorm without affine
    #: parameters on the backbone features before the Linear layer (SEE's ``--use_lastnorm``).
    head_norm: Literal["none", "bn", "ln", "pre_ln"] = "none"
    #: initialisation of the head's Linear layer: Proxy-Anchor's Kaiming (fan_out) or SEE's orthogonal.
    head_init: Literal["kaiming_fan_out", "orthogonal"] = "kaiming_fan_out"
    #: backbone parameter-name prefixes that never train, e.g. ["body.patch_embed"] (SEE freezes DeiT's
    #: patch embedding); a prefix that matches nothing is an error when the model is built.
    frozen: List[str] = Field(default_factory=list)
    normalize: bool = True
    freeze_bn: bool = False
    channels_last: bool = False
    sync_bn: bool = False


class LossConfig(_Strict):
    """A registered loss and its keyword arguments (checked against the loss's signature)."""

    name: str = "proxy_anchor"
    params: Dict[str, Any] = Field(default_factory=dict)
    #: lr multiplier of the loss's trainable parameters (proxies): Proxy-Anchor 100, SEE 1e4.
    proxy_lr_mult: float = Field(100.0, gt=0.0)


class SynthesisConfig(_Strict):
    """An optional embedding-space synthesiser wrapped around the loss.

    ``synthesis`` is one of these, or a list of them (several synthesisers on one loss, each with its own
    weight; ``RunConfig.synthesisers()`` gives the list either way).
    """

    name: Optional[str] = None
    params: Dict[str, Any] = Field(default_factory=dict)
    weight: Optional[float] = Field(None, ge=0.0)


class OptimConfig(_Strict):
    """Optimiser and learning-rate schedule."""

    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    #: Adam/AdamW epsilon (SEE uses 1e-4 when training in fp16).
    eps: float = Field(1e-8, gt=0.0)
    backbone_lr_mult: float = Field(1.0, ge=0.0)
    #: lr multiplier of the embedding head (SEE's ``--fc_lr_scale``).
    head_lr_mult: float = Field(1.0, gt=0.0)
    scheduler: Literal["none", "cosine", "step"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    #: what happens during the first ``warmup_epochs`` epochs. "linear": every group's lr ramps up from
    #: lr/steps to lr. "frozen_backbone": only the head and the loss's proxies train; the backbone takes no
    #: optimiser step at all (Proxy-Anchor ``--warm``: requires_grad=False, so no moments, no decay).
    #: "zero_backbone_lr": the backbone group's lr is 0 (SEE: its AdamW moments still see the gradients).
    #: The lr schedule counts the warm-up epochs in both frozen modes, as the sources do.
    warmup: Literal["linear", "frozen_backbone", "zero_backbone_lr"] = "linear"
    milestones: List[int] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0.0)
    #: step scheduler: the lr factor from each milestone on (one per milestone), instead of gamma^i; e.g.
    #: Ye et al.'s demo_seen.py l.160-168: milestones [120, 160, 200], factors [0.1, 0.05, 0.01].
    milestone_factors: Optional[List[float]] = None



class TrainConfig(_Strict):
    """The loop: length, precision, clipping, validation, checkpoints, logging."""

    epochs: int = Field(10, gt=0)
    max_steps_per_epoch: Optional[int] = Field(None, gt=0)
    amp: Literal["none", "bf16", "fp16"] = "none"
    #: clip the global gradient norm of all trained parameters to this value
    grad_clip: Optional[float] = Field(None, gt=0.0)
    #: clamp every gradient element to [-v, v] (Proxy-Anchor and SEE clip by value at 10)
    grad_clip_value: Optional[float] = Field(None, gt=0.0)
    val_every: int = Field(1, gt=0)
    #: validation metric that picks best.pt. MAP@R by default: R@1 on a small validation split saturates
    #: (the 2-class MNIST validation split sits at 98-99% R@1 from the first epoch) and then picks among
    #: near-ties (a 4-epoch MNIST run kept epoch 1: test R@1 +0.9; by MAP@R epoch 4: +3.5), while MAP@R
    #: scores the whole ranking and keeps separating checkpoints.
    select_metric: str = "map@r"
    #: a split evaluated every ``monitor_every`` epochs only to log its curve (the seen-class protocol's
    #: test kNN accuracy per epoch, SPEC §1); never used to select a checkpoint.
    monitor_split: Optional[str] = None
    monitor_every: int = Field(1, gt=0)
    checkpoint_every_steps: int = Field(0, ge=0)
    log_every: int = Field(10, gt=0)
    compile: bool = False
    progress: bool = True
    #: write retrieval grids, an embedding map and training curves into RUN_DIR/report at the end
    report: bool = True


class EvalConfig(_Strict):
    """Evaluation: retrieval metrics and (for seen-class protocols) weighted kNN accuracy."""

    ks: List[int] = Field(default_factory=lambda: [1, 2, 4, 8])
    nmi: bool = True
    knn_accuracy: bool = False
    knn_k: int = Field(200, gt=0)
    knn_temperature: float = Field(0.1, gt=0.0)
    batch_size: int = Field(256, gt=0)

    @field_validator("ks")
    @classmethod
    def _ks_positive(cls, v: List[int]) -> List[int]:
        if not v or any(k <= 0 for k in v):
            raise ValueError(f"ks must be a non-empty list of positive integers, got {v}")
        return sorted(set(v))


class RunConfig(_Strict):
    """A whole run."""

    name: str = "run"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    synthesis: Union[SynthesisConfig, List[SynthesisConfig]] = Field(default_factory=SynthesisConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    def synthesisers(self) -> List[SynthesisConfig]:
        """The configured synthesisers: [] (none), one, or the list given under ``synthesis``."""
        if isinstance(self.synthesis, list):
            return list(self.synthesis)
        return [] if self.synthesis.name is None else [self.synthesis]

    @model_validator(mode="after")
    def _synthesis_list_named(self) -> "RunConfig":
        if isinstance(self.synthesis, list):
            unnamed = [i for i, s in enumerate(self.synthesis) if s.name is None]
            if unnamed:
                raise ValueError(f"synthesis[{unnamed[0]}] has no name: every entry of a synthesis list names a synthesiser")
        return self

    @model_validator(mode="after")
    def _batch_divisible(self) -> "RunConfig":
        d = self.data
        if d.sampler == "m_per_class" and d.batch_size % d.samples_per_class:
            raise ValueError(
                f"data.batch_size={d.batch_size} must be a multiple of data.samples_per_class="
                f"{d.samples_per_class} for the m_per_class sampler"
            )
        return self

    @model_validator(mode="after")
    def _factors_match_milestones(self) -> "RunConfig":
        o = self.optim
        f = o.milestone_factors
        if f is not None and (len(f) != len(o.milestones) or any(x <= 0 for x in f)):
            raise ValueError(f"optim.milestone_factors={f} needs one positive factor per milestone (optim.milestones={o.milestones})")
        if o.milestones != sorted(set(o.milestones)):
            raise ValueError(f"optim.milestones={o.milestones} must be strictly increasing epochs")
        return self

    @model_validator(mode="after")
    def _samples_per_class_needs_its_sampler(self) -> "RunConfig":
        d = self.data
        if d.sampler == "random" and d.samples_per_class is not None:
            raise ValueError(
                f"data.samples_per_class={d.samples_per_class} has no effect with data.sampler=random (it draws "
                "images uniformly); set data.sampler=m_per_class to get that many images per class, or remove "
                "data.samples_per_class (for a config stored by an older version: --set data.samples_per_class=null)"
            )
        return self

    @model_validator(mode="after")
    def _select_metric_exists(self) -> "RunConfig":
        valid = [f"recall@{k}" for k in self.eval.ks] + ["precision@1", "map@r", "r_precision"]
        valid += ["nmi"] if self.eval.nmi else []
        valid += ["knn_accuracy"] if self.eval.knn_accuracy else []
        if self.train.select_metric not in valid:
            raise ValueError(
                f"train.select_metric={self.train.select_metric!r} is not a validation metric of this config; "
                f"choose one of {', '.join(valid)} (recall@K needs K in eval.ks, nmi needs eval.nmi, "
                "knn_accuracy needs eval.knn_accuracy)"
            )
        return self

    def to_dict(self) -> Dict[str, Any]:
        return self.model_dump(mode="json")


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            parent = _section_for(e["loc"][:-1])
            valid = ", ".join(sorted(parent.model_fields)) if parent is not None else "?"
            lines.append(f"unknown key '{path}' in {source}; valid keys here: {valid}")
        elif not e["loc"] and e["type"] == "value_error":
            # A cross-field check: its message already names the fields and values (not the whole config).
            msg = str(e["ctx"]["error"]) if "error" in e.get("ctx", {}) else e["msg"]
            lines.append(f"{msg} (in {source})")
        else:
            got = e.get("input")
            lines.append(f"{path}: {e['msg']} (got {got!r}) in {source}")
    return "\n".join(lines)


def _section_for(loc: Sequence[Any]) -> Optional[type]:
    model: Any = RunConfig
    for key in loc:
        field = model.model_fields.get(key) if hasattr(model, "model_fields") else None
        if field is None:
            return None
        model = field.annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def parse_override(item: str) -> Tuple[List[str], Any]:
    """Split ``a.b=value`` into (["a", "b"], parsed value); the value is read as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.epochs=5")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(raw: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Return a copy of ``raw`` with every ``a.b=v`` override applied (validation happens later)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for p in path[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: '{p}' is a value, not a section")
            node = nxt
        node[path[-1]] = value
    return out


def build_config(raw: Optional[Dict[str, Any]] = None, overrides: Sequence[str] = (), source: str = "config") -> RunConfig:
    """Validate a raw mapping (plus overrides) into a :class:`RunConfig`."""
    raw = dict(raw or {})
    merged = apply_overrides(raw, overrides)
    try:
        cfg = RunConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None
    _check_registered_names(cfg, source)
    return cfg


def _check_registered_names(cfg: RunConfig, source: str) -> None:
    from deepmetric.registry import BACKBONES, DATASETS, LOSSES, SYNTHESISERS

    checks = [("data.dataset", cfg.data.dataset, DATASETS), ("loss.name", cfg.loss.name, LOSSES)]
    if not cfg.model.backbone.startswith("timm:"):
        checks.append(("model.backbone", cfg.model.backbone, BACKBONES))
    for i, spec in enumerate(cfg.synthesisers()):
        checks.append((f"synthesis[{i}].name" if isinstance(cfg.synthesis, list) else "synthesis.name", spec.name, SYNTHESISERS))
    for path, name, reg in checks:
        if name not in reg:
            try:
                reg.get(name)
            except KeyError as exc:
                raise ConfigError(f"{path}: {exc.args[0]} (in {source})") from None


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML recipe, apply ``--set`` overrides and validate."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist; see the recipes in configs/ (deepmetric list)")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p} must hold a mapping of sections (data, model, loss, ...), got {type(raw).__name__}")
    return build_config(raw, overrides, source=str(p))


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
