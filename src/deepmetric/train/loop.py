"""The training loop, readable top to bottom: ``train(cfg, out_dir)``.

One process or ``torchrun`` with N processes (DDP; embeddings gathered before the loss), AMP, gradient
clipping, per-step lr schedule, validation with best-checkpoint selection, atomic checkpoints every N
steps and every epoch, exact resume (also mid-epoch; the config may only change in the keys of
:data:`deepmetric.train.resume.MAY_CHANGE_ON_RESUME`), TensorBoard scalars, ``metrics.jsonl`` and the
resolved config in the run folder.

``_train`` reads as the outline of a run; its parts are named functions over one :class:`Run`:
:func:`train_step` (one optimisation step: extend it for new loss inputs or gradient handling),
:func:`evaluate_and_log` (evaluation of a split) and :func:`save_state` (checkpointing). Each split's
evaluation dataset is built once per run (:class:`EvalSets`) and reused by every evaluation.
"""
from __future__ import annotations

import inspect
import json
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import Dataset
from torch.utils.tensorboard import SummaryWriter

from deepmetric.checkpoint import CheckpointError, check_compatible, load_checkpoint, save_checkpoint
from deepmetric.config import RunConfig, SynthesisConfig, save_config
from deepmetric.functional.similarity import l2_normalize
from deepmetric.data.build import build_dataset
from deepmetric.distributed import DistContext, barrier, cleanup, gather_nograd, gather_with_grad, init_distributed
from deepmetric.inference import build_embedding_model, embed_dataset, evaluate_split
from deepmetric.losses.build import build_loss
from deepmetric.losses.synthesis_loss import ComposedSynthesisLoss, SynthesisLoss
from deepmetric.models import model_signature
from deepmetric.registry import LOSSES, SYNTHESISERS
from deepmetric.retrieval import topk_search
from deepmetric.train.data import TrainData, build_train_data, item_seed
from deepmetric.train.optim import backbone_frozen, build_optimizer, clip_gradients, drop_backbone_grads, lr_factor, set_lr
from deepmetric.train.resume import check_resume_config


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------------------------- building


def is_unsupervised(cfg: RunConfig) -> bool:
    """Instance-wise training: two views per image, instance ids instead of labels."""
    loss_cls = LOSSES.get(cfg.loss.name)
    wants = bool(getattr(loss_cls, "unsupervised", False))
    if wants and not cfg.data.two_view:
        raise ValueError(f"loss {cfg.loss.name!r} is unsupervised and needs two views per image: set data.two_view=true")
    return cfg.data.two_view


def build_synthesiser(spec: SynthesisConfig) -> nn.Module:
    """One configured synthesiser; unknown parameters are an error naming the valid ones."""
    ctor = SYNTHESISERS.get(spec.name)
    valid = [k for k, p in inspect.signature(ctor).parameters.items() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(spec.params) - set(valid))
    if unknown:
        raise ValueError(f"synthesiser {spec.name!r} has no parameter(s) {unknown}; valid: {', '.join(valid)}")
    return ctor(**spec.params)


def build_training_loss(cfg: RunConfig, *, num_classes: int, embedding_dim: int) -> nn.Module:
    """The configured loss, wrapped with the configured synthesiser(s) if any."""
    base = build_loss(cfg.loss.name, cfg.loss.params, num_classes=num_classes, embedding_dim=embedding_dim)
    specs = cfg.synthesisers()
    if not specs:
        return base
    if len(specs) == 1:
        return SynthesisLoss(base, build_synthesiser(specs[0]), weight=specs[0].weight)
    return ComposedSynthesisLoss(base, [(build_synthesiser(s), s.weight) for s in specs])


def _accepts_context(loss_fn: nn.Module) -> bool:
    params = inspect.signature(loss_fn.forward).parameters
    return all(k in params for k in ("generator", "progress", "epoch", "epochs"))


def _uses_features(loss_fn: nn.Module) -> bool:
    """Whether the loss wants the pooled backbone features and the head (``features=``, ``head=``): it
    accepts them and says it uses them (``uses_features``, e.g. intra-variance before the head)."""
    params = inspect.signature(loss_fn.forward).parameters
    return "features" in params and "head" in params and bool(getattr(loss_fn, "uses_features", False))


def _uses_images(loss_fn: nn.Module) -> bool:
    """Whether the loss wants the batch's images and a way to embed more (``images=``, ``embed=``,
    ``image_rows=``): it accepts them and says it uses them (``uses_images``, intra-variance on images)."""
    params = inspect.signature(loss_fn.forward).parameters
    return all(k in params for k in ("images", "embed", "image_rows")) and bool(getattr(loss_fn, "uses_images", False))


def _image_context(run: Run, images: torch.Tensor, unsupervised: bool) -> Dict[str, Any]:
    """``images``, ``embed`` and ``image_rows`` for a loss that augments images (:func:`_uses_images`).

    ``embed`` runs the unwrapped model (not the DDP/compiled wrapper: a second DDP forward before the
    backward is not allowed; the gradients still reach the same parameters, which DDP reduces once) under
    the step's autocast, with BatchNorm on batch statistics only (augmented copies must not move the
    running statistics). Under DDP the loss sees the global batch of embeddings but only this process's
    images: ``image_rows`` are their rows in it (rank order; (view1 | view2) halves when unsupervised),
    so each process synthesises from its own samples.
    """
    from deepmetric.synthesis.intra_variance import batch_statistics_only

    model, cfg, ctx = _unwrap(run.model), run.cfg, run.ctx

    def embed(x: torch.Tensor) -> torch.Tensor:
        if cfg.model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _amp_context(cfg, ctx.device), batch_statistics_only(model):
            return model(x).float()

    n = len(images)
    if unsupervised:
        m = n // 2
        local = torch.arange(m, device=images.device)
        rows = torch.cat([ctx.rank * m + local, ctx.world_size * m + ctx.rank * m + local])
    else:
        rows = ctx.rank * n + torch.arange(n, device=images.device) if ctx.enabled else torch.arange(n, device=images.device)
    return {"images": images, "embed": embed, "image_rows": rows}


def _returns_terms(loss_fn: nn.Module) -> bool:
    """Whether the loss is a composite that can report its terms (``return_terms=True`` -> LossTerms)."""
    return "return_terms" in inspect.signature(loss_fn.forward).parameters


def _amp_context(cfg: RunConfig, device: torch.device):
    if cfg.train.amp == "none":
        return nullcontext()
    dtype = torch.bfloat16 if cfg.train.amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# --------------------------------------------------------------------------------------------- evaluation


class EvalSets:
    """Each split's evaluation dataset (evaluation transform), built on first use and reused all run long:
    datasets such as CIFAR-10 are decoded once, not at every evaluation."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self._sets: Dict[str, Dataset] = {}

    def __call__(self, split: str) -> Dataset:
        if split not in self._sets:
            self._sets[split] = build_dataset(self.cfg, split, train=False)
        return self._sets[split]


def evaluate(model: nn.Module, cfg: RunConfig, ctx: DistContext, split: str, *, datasets: Optional[EvalSets] = None) -> Dict[str, float]:
    """Retrieval metrics (and weighted kNN accuracy when configured) on one split."""
    datasets = datasets or EvalSets(cfg)
    memory = datasets(cfg.data.train_split) if cfg.eval.knn_accuracy else None
    return evaluate_split(_unwrap(model), cfg, ctx, datasets(split), memory=memory)


# ------------------------------------------------------------------------------------------------- train


@dataclass
class Run:
    """Everything one training run works with; the functions below read and update it."""

    cfg: RunConfig
    ctx: DistContext
    out: Path
    model: nn.Module  # the bare model (checkpointed, evaluated)
    train_model: nn.Module  # the model the step calls (DDP and/or compiled around ``model``)
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    data: TrainData
    datasets: EvalSets
    signature: Dict[str, Any]
    steps_per_epoch: int
    say: Callable[..., None]
    state: Dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "batch": 0, "step": 0, "best": None, "best_epoch": None})
    writer: Optional[SummaryWriter] = None
    #: the last step's composite-loss terms (loss_base, loss_aux, loss_aux_weight) for the log; {} otherwise
    step_terms: Dict[str, float] = field(default_factory=dict)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.cfg.train.epochs

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out / "best.pt"


def train(cfg: RunConfig, out_dir: str | Path, *, resume: bool = False, evaluate_before: bool = False, console=None) -> Dict[str, Any]:
    """Train ``cfg`` into ``out_dir``; returns the final metrics. See the module docstring."""
    ctx = init_distributed(cfg.device)
    try:
        return _train(cfg, Path(out_dir), ctx, resume=resume, evaluate_before=evaluate_before, console=console or Console())
    finally:
        cleanup(ctx)


def _train(cfg: RunConfig, out: Path, ctx: DistContext, *, resume: bool, evaluate_before: bool, console: Console) -> Dict[str, Any]:
    run = build_run(cfg, out, ctx, resume=resume, console=console)
    results: Dict[str, Any] = {"run_dir": str(out)}
    if evaluate_before and not resume:
        results["before"] = evaluate_and_log(run, cfg.data.test_split, -1, split="test", when="before")
    t_start = time.time()
    with _progress(run, console) as advance, _sigint_flag() as stop:
        for epoch in range(run.state["epoch"], cfg.train.epochs):
            start_epoch(run, epoch)
            for batch in run.data.loader:
                if run.state["batch"] >= run.steps_per_epoch:
                    break
                loss = train_step(run, batch, epoch)
                advance(loss)
                after_step(run, epoch, loss, interrupted=stop["requested"])
            end_epoch(run, epoch)
    results["train_seconds"] = time.time() - t_start
    # Final test evaluation with the checkpoint selected on the validation split (never on test).
    if run.best_path.exists():
        run.model.load_state_dict(load_checkpoint(run.best_path, map_location=ctx.device)["model"])
        results["selected_epoch"] = run.state["best_epoch"]
    results["test"] = evaluate_and_log(run, cfg.data.test_split, run.state["epoch"] - 1, split="test", when="final")
    if ctx.is_main:
        (out / "results.json").write_text(json.dumps(results, indent=2))
        run.writer.close()
    return results


def build_run(cfg: RunConfig, out: Path, ctx: DistContext, *, resume: bool, console: Console) -> Run:
    """Model, loss, optimizer and data of the run; with ``resume`` the state of ``out/last.pt``.

    Nothing is written into ``out`` before every check has passed: a refused run leaves the folder as it was.
    """
    last_path = out / "last.pt"
    if ctx.is_main and not resume and last_path.exists():
        raise FileExistsError(f"{out} already holds a run (last.pt); pass --resume to continue it or choose another --out")
    if resume and not last_path.exists():
        raise CheckpointError(f"--resume: {last_path} does not exist; start the run without --resume")
    # Model initialisation is the one place the global RNG is seeded (layer constructors use it).
    torch.manual_seed(cfg.seed)
    unsupervised = is_unsupervised(cfg)
    data = build_train_data(cfg, ctx, unsupervised=unsupervised)
    datasets = EvalSets(cfg)
    probe = datasets(cfg.data.test_split)[0][0]
    model = build_embedding_model(cfg, in_chans=int(probe.shape[0])).to(ctx.device)
    if cfg.model.sync_bn and ctx.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    num_classes = data.num_classes if not unsupervised else len(data.dataset)
    loss_fn = build_training_loss(cfg, num_classes=num_classes, embedding_dim=cfg.model.embedding_dim).to(ctx.device)
    optimizer = build_optimizer(model, loss_fn, cfg)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=cfg.train.amp == "fp16")
    steps_per_epoch = len(data.batches.batch_sampler)
    if cfg.train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
    say = console.print if ctx.is_main else (lambda *a, **k: None)
    run = Run(cfg, ctx, out, model, model, loss_fn, optimizer, scaler, data, datasets, model_signature(model), steps_per_epoch, say)
    if resume:
        ckpt = load_checkpoint(last_path, map_location=ctx.device)
        check_compatible(ckpt, run.signature, str(last_path))
        check_resume_config(ckpt["config"], cfg, source=str(last_path))
        model.load_state_dict(ckpt["model"])
        loss_fn.load_state_dict(ckpt["loss"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        run.state.update(ckpt["state"])
        say(f"[bold]resumed[/] {last_path} at epoch {run.state['epoch']} batch {run.state['batch']} (step {run.state['step']})")
    if ctx.enabled:
        run.train_model = nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if cfg.train.compile:
        run.train_model = torch.compile(run.train_model)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        run.writer = SummaryWriter(str(out / "tb"))
    return run


def start_epoch(run: Run, epoch: int) -> None:
    """Position the sampler (mid-epoch after a resume), the per-epoch dataset state and the train mode."""
    run.data.batches.set_epoch(epoch, start=run.state["batch"])
    if hasattr(run.data.dataset, "set_epoch"):
        run.data.dataset.set_epoch(epoch)
    if run.data.unsupervised and run.cfg.data.neighbour_positives > 0:
        _refresh_neighbours(run)
    run.train_model.train()


def train_step(run: Run, batch: Any, epoch: int) -> float:
    """One optimisation step on ``batch``; returns the loss. Advances ``state["step"]`` and ``["batch"]``."""
    cfg, ctx, device, step = run.cfg, run.ctx, run.ctx.device, run.state["step"]
    frozen = backbone_frozen(step, steps_per_epoch=run.steps_per_epoch, cfg=cfg)
    set_lr(run.optimizer, lr_factor(step, steps_per_epoch=run.steps_per_epoch, cfg=cfg),
           zero_backbone=frozen and cfg.optim.warmup == "zero_backbone_lr")
    if run.data.unsupervised:
        v1, v2, idx = batch
        images, labels = torch.cat([v1, v2]), torch.cat([idx, idx])
    else:
        images, labels = batch
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    if cfg.model.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    # Dropout-like randomness inside the model is seeded per step: resumes are exact.
    torch.manual_seed(item_seed(cfg.seed, -1, step))
    feature_loss = _uses_features(run.loss_fn)
    with _amp_context(cfg, device):
        if feature_loss:  # the loss synthesises before the head: it needs the pooled features
            feats, emb = run.train_model(images, return_features=True)
        else:
            feats, emb = None, run.train_model(images)
    if run.data.unsupervised and ctx.enabled:  # keep (view1 | view2) order in the global batch
        m = len(emb) // 2
        emb = torch.cat([gather_with_grad(emb[:m], ctx), gather_with_grad(emb[m:], ctx)])
        labels = torch.cat([gather_nograd(labels[:m], ctx), gather_nograd(labels[m:], ctx)])
        if feats is not None:
            feats = torch.cat([gather_with_grad(feats[:m], ctx), gather_with_grad(feats[m:], ctx)])
    elif ctx.enabled:
        emb, labels = gather_with_grad(emb, ctx), gather_nograd(labels, ctx)
        feats = gather_with_grad(feats, ctx) if feats is not None else None
    context: Dict[str, Any] = {}
    if _accepts_context(run.loss_fn):
        gen = torch.Generator(device=emb.device).manual_seed(item_seed(cfg.seed, -2, step))
        context.update(generator=gen, progress=step / max(1, run.total_steps), epoch=epoch, epochs=cfg.train.epochs)
    if feature_loss:
        context.update(features=feats.float(), head=_unwrap(run.model).head)
    if _uses_images(run.loss_fn):
        context.update(_image_context(run, images, run.data.unsupervised))
    want_terms = _returns_terms(run.loss_fn) and (step + 1) % cfg.train.log_every == 0
    # Losses compute in float32 whatever the autocast dtype of the network.
    with torch.autocast(device_type=device.type, enabled=False):
        loss = run.loss_fn(emb.float(), labels, **context, **({"return_terms": True} if want_terms else {}))
    run.step_terms = {}
    if want_terms:  # a composite: loss = loss_base + loss_aux_weight * loss_aux
        terms, loss = loss, loss.loss
        run.step_terms = {"loss_base": terms.base.item(), "loss_aux": terms.aux.item(), "loss_aux_weight": float(terms.weight)}
    if not torch.isfinite(loss):
        raise TrainingDiverged(
            f"loss became {loss.item()} at epoch {epoch + 1}, step {step}; the last good checkpoint "
            f"({run.last_path.name}) is kept. Lower optim.lr, set train.grad_clip, or use train.amp=bf16 instead of fp16."
        )
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if frozen and cfg.optim.warmup == "frozen_backbone":
        drop_backbone_grads(run.optimizer)
    if cfg.train.grad_clip or cfg.train.grad_clip_value:
        run.scaler.unscale_(run.optimizer)
        clip_gradients(run.optimizer, max_norm=cfg.train.grad_clip, max_value=cfg.train.grad_clip_value)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.state["step"] += 1
    run.state["batch"] += 1
    return loss.item()


def after_step(run: Run, epoch: int, loss: float, *, interrupted: bool) -> None:
    """Log the step, save ``last.pt`` when due, and stop cleanly after a Ctrl-C."""
    step = run.state["step"]
    if step % run.cfg.train.log_every == 0:
        log(run, {"split": "train", "epoch": epoch + 1, "step": step, "loss": loss, "lr": run.optimizer.param_groups[0]["lr"],
                  **run.step_terms})
    if run.cfg.train.checkpoint_every_steps and step % run.cfg.train.checkpoint_every_steps == 0:
        save_state(run, run.last_path)
    if interrupted:
        save_state(run, run.last_path)
        run.say(f"[yellow]interrupted[/]: progress saved to {run.last_path} after step {step}; continue with --resume")
        raise KeyboardInterrupt


def end_epoch(run: Run, epoch: int) -> None:
    """Validation (best.pt when the selected metric improves), the monitored split, then ``last.pt``."""
    cfg = run.cfg
    run.state["epoch"], run.state["batch"] = epoch + 1, 0
    if _due(cfg, epoch, cfg.train.val_every) and cfg.data.val_split:
        val = evaluate_and_log(run, cfg.data.val_split, epoch, label="val", split="val")
        score = val[cfg.train.select_metric]  # the config checked that the metric exists
        if run.state["best"] is None or score > run.state["best"]:
            run.state["best"], run.state["best_epoch"] = score, epoch + 1
            save_state(run, run.best_path)
    # a curve to watch (e.g. test kNN accuracy, as the seen-class papers plot): logged, never selected on
    mon = cfg.train.monitor_split
    if mon and _due(cfg, epoch, cfg.train.monitor_every):
        evaluate_and_log(run, mon, epoch, label=f"{mon} (monitored)", split=mon, when="monitor")
    save_state(run, run.last_path)


def _due(cfg: RunConfig, epoch: int, every: int) -> bool:
    """An evaluation every ``every`` epochs is due after ``epoch`` (0-based), and always after the last."""
    return (epoch + 1) % every == 0 or epoch + 1 == cfg.train.epochs


def evaluate_and_log(run: Run, name: str, epoch: int, *, label: Optional[str] = None, **tags: Any) -> Dict[str, float]:
    """Evaluate split ``name`` after ``epoch`` (−1: before training); log the metrics with ``tags`` and,
    given a ``label``, print them."""
    metrics = evaluate(run.model, run.cfg, run.ctx, name, datasets=run.datasets)
    log(run, {**tags, "epoch": epoch + 1, "step": run.state["step"], **metrics})
    if label:
        run.say(f"epoch {epoch + 1}: {label} " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return metrics


def log(run: Run, record: Dict[str, Any]) -> None:
    """Append ``record`` to ``metrics.jsonl`` and its numbers to TensorBoard (main process only)."""
    if not run.ctx.is_main:
        return
    with open(run.out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    for k, v in record.items():
        if isinstance(v, (int, float)) and k not in ("epoch", "step"):
            run.writer.add_scalar(f"{record.get('split', 'train')}/{k}", v, record.get("step", 0))


def save_state(run: Run, path: Path) -> None:
    """Checkpoint everything an exact resume needs, with the config and the model signature (atomic)."""
    if run.ctx.is_main:
        save_checkpoint(
            {
                "model": run.model.state_dict(),
                "loss": run.loss_fn.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "scaler": run.scaler.state_dict(),
                "state": dict(run.state),
                "config": run.cfg.to_dict(),
                "model_signature": run.signature,
            },
            path,
        )
    barrier(run.ctx)


@contextmanager
def _progress(run: Run, console: Console) -> Iterator[Callable[[float], None]]:
    """A progress bar over all steps of the run (off with ``train.progress=false``); yields ``advance(loss)``."""
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(), console=console,
                        disable=not (run.cfg.train.progress and run.ctx.is_main), transient=True)
    with progress:
        task = progress.add_task("train", total=run.total_steps, completed=run.state["step"], loss=float("nan"))

        def advance(loss: float) -> None:
            epoch = run.state["step"] // max(1, run.steps_per_epoch) + 1
            progress.update(task, advance=1, loss=loss, description=f"epoch {min(epoch, run.cfg.train.epochs)}/{run.cfg.train.epochs}")

        yield advance


@contextmanager
def _sigint_flag() -> Iterator[Dict[str, bool]]:
    """Ctrl-C (SIGINT) only sets a flag: the step in flight completes, then the state is saved and the run
    stops. Saving in the middle of a step would store half-updated BatchNorm statistics."""
    stop = {"requested": False}
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, lambda *_: stop.update(requested=True))
    try:
        yield stop
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


class _PooledFeatures(nn.Module):
    """images -> L2-normalised pooled backbone features of an embedding model (its head is not used)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)  # embedding restores this wrapper's mode, which must be the model's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_normalize(self.model.features(x).float())


def neighbour_table(model: nn.Module, dataset: Dataset, cfg: RunConfig, ctx: DistContext) -> torch.Tensor:
    """(N,) long: each instance of ``dataset`` (the training split under the eval transform) paired with
    its nearest other instance (self excluded), searched in the L2-normalised pooled backbone features
    (``data.neighbour_space: backbone``, the released CUB code's pool5 features, SPEC §1) or in the
    embedding (``embedding``)."""
    net = _unwrap(model)
    if cfg.data.neighbour_space == "backbone":
        net = _PooledFeatures(net)
    emb, _ = embed_dataset(net, dataset, cfg, ctx)
    _, idx = topk_search(emb, k=1)  # the training set is its own gallery: self excluded
    return torch.as_tensor(idx[:, 0]).long()


def _refresh_neighbours(run: Run) -> None:
    """Neighbour positives (released CUB code): each epoch, each instance's nearest neighbour
    (:func:`neighbour_table`) becomes its second view with probability p."""
    cfg = run.cfg
    table = neighbour_table(run.model, run.datasets(cfg.data.train_split), cfg, run.ctx)
    run.data.dataset.set_neighbours(table, cfg.data.neighbour_positives, cfg.seed)
