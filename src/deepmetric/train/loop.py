"""The training loop, readable top to bottom: ``train(cfg, out_dir)``.

One process or ``torchrun`` with N processes (DDP; embeddings gathered before the loss), AMP, gradient
clipping, per-step lr schedule, validation with best-checkpoint selection, atomic checkpoints every N
steps and every epoch, exact resume (also mid-epoch), TensorBoard scalars, ``metrics.jsonl`` and the
resolved config in the run folder.
"""
from __future__ import annotations

import inspect
import json
import math
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

from deepmetric.config import RunConfig, save_config
from deepmetric.functional.similarity import l2_normalize
from deepmetric.losses.build import build_loss
from deepmetric.registry import LOSSES, SYNTHESISERS
from deepmetric.retrieval import embed, knn_accuracy, retrieval_metrics, topk_search
from deepmetric.train.checkpoint import CheckpointError, check_compatible, load_checkpoint, save_checkpoint
from deepmetric.train.data import build_dataset, build_train_data, eval_loader, item_seed
from deepmetric.train.distributed import DistContext, barrier, cleanup, gather_nograd, gather_with_grad, init_distributed
from deepmetric.train.optim import backbone_frozen, build_optimizer, clip_gradients, drop_backbone_grads, lr_factor, set_lr


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


def build_synthesiser(cfg: RunConfig) -> Optional[nn.Module]:
    if cfg.synthesis.name is None:
        return None
    ctor = SYNTHESISERS.get(cfg.synthesis.name)
    valid = [k for k, p in inspect.signature(ctor).parameters.items() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(cfg.synthesis.params) - set(valid))
    if unknown:
        raise ValueError(f"synthesiser {cfg.synthesis.name!r} has no parameter(s) {unknown}; valid: {', '.join(valid)}")
    return ctor(**cfg.synthesis.params)


def build_training_loss(cfg: RunConfig, *, num_classes: int, embedding_dim: int) -> nn.Module:
    """The configured loss, wrapped with the configured synthesiser if any."""
    base = build_loss(cfg.loss.name, cfg.loss.params, num_classes=num_classes, embedding_dim=embedding_dim)
    synth = build_synthesiser(cfg)
    if synth is None:
        return base
    from deepmetric.losses.synthesis_loss import SynthesisLoss

    return SynthesisLoss(base, synth, weight=cfg.synthesis.weight)


def build_embedding_model(cfg: RunConfig, in_chans: int) -> nn.Module:
    from deepmetric.models import build_model

    m = cfg.model
    return build_model(
        m.backbone,
        embedding_dim=m.embedding_dim,
        pretrained=m.pretrained,
        pooling=m.pooling,
        head_norm=m.head_norm,
        head_init=m.head_init,
        frozen=m.frozen,
        normalize=m.normalize,
        freeze_bn=m.freeze_bn,
        in_chans=in_chans,
    )


def model_signature(cfg: RunConfig, model: nn.Module) -> Dict[str, Any]:
    """What must match for a checkpoint's weights to fit this model (backbone, dims, parameter shapes)."""
    from deepmetric.models import model_signature as signature

    return signature(model)


def _accepts_context(loss_fn: nn.Module) -> bool:
    params = inspect.signature(loss_fn.forward).parameters
    return all(k in params for k in ("generator", "progress", "epoch", "epochs"))


def _uses_features(loss_fn: nn.Module) -> bool:
    """Whether the loss wants the pooled backbone features and the head (``features=``, ``head=``): it
    accepts them and says it uses them (``uses_features``, e.g. intra-variance before the head)."""
    params = inspect.signature(loss_fn.forward).parameters
    return "features" in params and "head" in params and bool(getattr(loss_fn, "uses_features", False))


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


@torch.no_grad()
def _embed_dataset(model: nn.Module, dataset, cfg: RunConfig, ctx: DistContext):
    """Embed a dataset; with several processes each embeds a shard and the shards are gathered."""
    n = len(dataset)
    amp_dtype = None if cfg.train.amp == "none" else (torch.bfloat16 if cfg.train.amp == "bf16" else torch.float16)
    if not ctx.enabled:
        return embed(model, eval_loader(dataset, cfg, ctx), device=ctx.device, amp_dtype=amp_dtype)
    per = math.ceil(n / ctx.world_size)
    idx = [min(i, n - 1) for i in range(ctx.rank * per, (ctx.rank + 1) * per)]  # pad the last shard
    emb, lab = embed(model, eval_loader(dataset, cfg, ctx, idx), device=ctx.device, amp_dtype=amp_dtype)
    emb = gather_nograd(emb.to(ctx.device), ctx).cpu()[:n]
    lab = gather_nograd(lab.to(ctx.device), ctx).cpu()[:n]
    return emb, lab


def evaluate(model: nn.Module, cfg: RunConfig, ctx: DistContext, split: str, *, train_memory=None) -> Dict[str, float]:
    """Retrieval metrics (and weighted kNN accuracy when configured) on one split."""
    dataset = build_dataset(cfg, split, train=False)
    emb, labels = _embed_dataset(_unwrap(model), dataset, cfg, ctx)
    masks = {}
    if getattr(dataset, "is_query", None) is not None:
        masks = {"query_mask": np.asarray(dataset.is_query), "gallery_mask": np.asarray(dataset.is_gallery)}
    metrics = retrieval_metrics(emb, labels, ks=tuple(cfg.eval.ks), nmi=cfg.eval.nmi, seed=cfg.seed, **masks)
    if cfg.eval.knn_accuracy:
        metrics["knn_accuracy"] = _knn_accuracy(model, cfg, ctx, emb, labels, dataset, train_memory)
    return {k: float(v) for k, v in metrics.items()}


def _knn_accuracy(model, cfg, ctx, emb, labels, dataset, train_memory) -> float:
    """Weighted kNN (SPEC §1). Seen classes: the training split is the memory. Unseen classes (the
    evaluated split's classes are not the training classes): leave-one-out over the split itself."""
    train_ds = build_dataset(cfg, cfg.data.train_split, train=False)
    k, t = cfg.eval.knn_k, cfg.eval.knn_temperature
    if list(getattr(train_ds, "class_names", [])) == list(getattr(dataset, "class_names", [None])):
        labeled = getattr(train_ds, "is_labeled", None)
        if labeled is not None and not bool(np.all(labeled)):
            # e.g. STL-10 train+unlabeled: unlabeled images carry a placeholder label and must not vote
            train_ds = torch.utils.data.Subset(train_ds, np.flatnonzero(labeled).tolist())
        mem_emb, mem_lab = _embed_dataset(_unwrap(model), train_ds, cfg, ctx)
        return float(knn_accuracy(mem_emb, mem_lab, emb, labels, k=k, temperature=t))
    return float(knn_accuracy(emb, labels, emb, labels, k=k, temperature=t, exclude_self=True))


# ------------------------------------------------------------------------------------------------- train


def train(cfg: RunConfig, out_dir: str | Path, *, resume: bool = False, evaluate_before: bool = False, console=None) -> Dict[str, Any]:
    """Train ``cfg`` into ``out_dir``; returns the final metrics. See the module docstring."""
    ctx = init_distributed(cfg.device)
    try:
        return _train(cfg, Path(out_dir), ctx, resume=resume, evaluate_before=evaluate_before, console=console)
    finally:
        cleanup(ctx)


def _train(cfg: RunConfig, out: Path, ctx: DistContext, *, resume: bool, evaluate_before: bool, console) -> Dict[str, Any]:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    console = console or Console()
    say = console.print if ctx.is_main else (lambda *a, **k: None)
    device = ctx.device
    last_path, best_path = out / "last.pt", out / "best.pt"
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not resume and last_path.exists():
            raise FileExistsError(f"{out} already holds a run (last.pt); pass --resume to continue it or choose another --out")
        save_config(cfg, out / "config.yaml")

    # Model initialisation is the one place the global RNG is seeded (layer constructors use it).
    torch.manual_seed(cfg.seed)
    unsupervised = is_unsupervised(cfg)
    data = build_train_data(cfg, ctx, unsupervised=unsupervised)
    probe = build_dataset(cfg, cfg.data.test_split, train=False)[0][0]
    model = build_embedding_model(cfg, in_chans=int(probe.shape[0])).to(device)
    if cfg.model.sync_bn and ctx.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    num_classes = data.num_classes if not unsupervised else len(data.dataset)
    loss_fn = build_training_loss(cfg, num_classes=num_classes, embedding_dim=cfg.model.embedding_dim).to(device)
    optimizer = build_optimizer(model, loss_fn, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")
    signature = model_signature(cfg, model)

    steps_per_epoch = len(data.batches.batch_sampler)
    if cfg.train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
    state = {"epoch": 0, "batch": 0, "step": 0, "best": None, "best_epoch": None}
    if resume:
        if not last_path.exists():
            raise CheckpointError(f"--resume: {last_path} does not exist; start the run without --resume")
        ckpt = load_checkpoint(last_path, map_location=device)
        check_compatible(ckpt, signature, str(last_path))
        model.load_state_dict(ckpt["model"])
        loss_fn.load_state_dict(ckpt["loss"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        state.update(ckpt["state"])
        say(f"[bold]resumed[/] {last_path} at epoch {state['epoch']} batch {state['batch']} (step {state['step']})")

    train_model: nn.Module = model
    if ctx.enabled:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.train.compile:
        train_model = torch.compile(train_model)
    ctx_loss = _accepts_context(loss_fn)
    feature_loss = _uses_features(loss_fn)
    terms_loss = _returns_terms(loss_fn)
    writer = None
    if ctx.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"))

    def log(record: Dict[str, Any]) -> None:
        if not ctx.is_main:
            return
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in record.items():
            if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                writer.add_scalar(f"{record.get('split', 'train')}/{k}", v, record.get("step", 0))

    def checkpoint(path: Path) -> None:
        if ctx.is_main:
            save_checkpoint(
                {
                    "model": model.state_dict(),
                    "loss": loss_fn.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "state": dict(state),
                    "config": cfg.to_dict(),
                    "model_signature": signature,
                },
                path,
            )
        barrier(ctx)

    def evaluate_and_log(name: Optional[str], every: int, epoch: int, label: str, **tags: Any) -> Optional[Dict[str, float]]:
        """Evaluate split ``name`` after ``epoch`` when it is due (every ``every`` epochs and the last); log
        the metrics with ``tags`` and print them."""
        if not name or ((epoch + 1) % every and epoch + 1 != cfg.train.epochs):
            return None
        metrics = evaluate(model, cfg, ctx, name)
        log({**tags, "epoch": epoch + 1, "step": state["step"], **metrics})
        say(f"epoch {epoch + 1}: {label} " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        return metrics

    results: Dict[str, Any] = {"run_dir": str(out)}
    if evaluate_before and not resume:
        results["before"] = evaluate(model, cfg, ctx, cfg.data.test_split)
        log({"split": "test", "epoch": 0, "step": 0, "when": "before", **results["before"]})

    total_steps = steps_per_epoch * cfg.train.epochs
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(), console=console,
                        disable=not (cfg.train.progress and ctx.is_main), transient=True)
    t_start = time.time()
    # Ctrl-C (SIGINT) only sets a flag: the step in flight completes, then the state is saved and the run
    # stops. Saving in the middle of a step would store half-updated BatchNorm statistics.
    stop = {"requested": False}
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        previous_handler = signal.signal(signal.SIGINT, lambda *_: stop.update(requested=True))
    try:
        with progress:
            task = progress.add_task("train", total=total_steps, completed=state["step"], loss=float("nan"))
            for epoch in range(state["epoch"], cfg.train.epochs):
                data.batches.set_epoch(epoch, start=state["batch"])
                if hasattr(data.dataset, "set_epoch"):
                    data.dataset.set_epoch(epoch)
                if unsupervised and cfg.data.neighbour_positives > 0:
                    _refresh_neighbours(model, cfg, ctx, data)
                train_model.train()
                progress.update(task, description=f"epoch {epoch + 1}/{cfg.train.epochs}")
                for batch in data.loader:
                    if state["batch"] >= steps_per_epoch:
                        break
                    step = state["step"]
                    frozen = backbone_frozen(step, steps_per_epoch=steps_per_epoch, cfg=cfg)
                    set_lr(optimizer, lr_factor(step, steps_per_epoch=steps_per_epoch, cfg=cfg),
                           zero_backbone=frozen and cfg.optim.warmup == "zero_backbone_lr")
                    if unsupervised:
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
                    with _amp_context(cfg, device):
                        if feature_loss:  # the loss synthesises before the head: it needs the pooled features
                            feats, emb = train_model(images, return_features=True)
                        else:
                            feats, emb = None, train_model(images)
                    if unsupervised and ctx.enabled:  # keep (view1 | view2) order in the global batch
                        m = len(emb) // 2
                        emb = torch.cat([gather_with_grad(emb[:m], ctx), gather_with_grad(emb[m:], ctx)])
                        labels = torch.cat([gather_nograd(labels[:m], ctx), gather_nograd(labels[m:], ctx)])
                        if feats is not None:
                            feats = torch.cat([gather_with_grad(feats[:m], ctx), gather_with_grad(feats[m:], ctx)])
                    elif ctx.enabled:
                        emb, labels = gather_with_grad(emb, ctx), gather_nograd(labels, ctx)
                        feats = gather_with_grad(feats, ctx) if feats is not None else None
                    log_now = (state["step"] + 1) % cfg.train.log_every == 0
                    extra: Dict[str, Any] = {}
                    if ctx_loss:
                        gen = torch.Generator(device=emb.device).manual_seed(item_seed(cfg.seed, -2, step))
                        extra.update(generator=gen, progress=step / max(1, total_steps), epoch=epoch, epochs=cfg.train.epochs)
                    if feature_loss:
                        extra.update(features=feats.float(), head=_unwrap(model).head)
                    if terms_loss and log_now:
                        extra.update(return_terms=True)
                    # Losses compute in float32 whatever the autocast dtype of the network.
                    with torch.autocast(device_type=device.type, enabled=False):
                        loss = loss_fn(emb.float(), labels, **extra)
                    terms = None
                    if extra.get("return_terms"):
                        terms, loss = loss, loss.loss
                    if not torch.isfinite(loss):
                        raise TrainingDiverged(
                            f"loss became {loss.item()} at epoch {epoch + 1}, step {step}; the last good checkpoint "
                            f"({last_path.name}) is kept. Lower optim.lr, set train.grad_clip, or use train.amp=bf16 instead of fp16."
                        )
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if frozen and cfg.optim.warmup == "frozen_backbone":
                        drop_backbone_grads(optimizer)
                    if cfg.train.grad_clip or cfg.train.grad_clip_value:
                        scaler.unscale_(optimizer)
                        clip_gradients(optimizer, max_norm=cfg.train.grad_clip, max_value=cfg.train.grad_clip_value)
                    scaler.step(optimizer)
                    scaler.update()
                    state["step"] += 1
                    state["batch"] += 1
                    progress.update(task, advance=1, loss=loss.item())
                    if state["step"] % cfg.train.log_every == 0:
                        record = {"split": "train", "epoch": epoch + 1, "step": state["step"], "loss": loss.item(), "lr": optimizer.param_groups[0]["lr"]}
                        if terms is not None:  # a composite: loss = loss_base + loss_aux_weight * loss_aux
                            record.update(loss_base=terms.base.item(), loss_aux=terms.aux.item(), loss_aux_weight=terms.weight)
                        log(record)
                    if cfg.train.checkpoint_every_steps and state["step"] % cfg.train.checkpoint_every_steps == 0:
                        checkpoint(last_path)
                    if stop["requested"]:
                        checkpoint(last_path)
                        say(f"[yellow]interrupted[/]: progress saved to {last_path} after step {state['step']}; continue with --resume")
                        raise KeyboardInterrupt
                state["epoch"], state["batch"] = epoch + 1, 0
                val = evaluate_and_log(cfg.data.val_split, cfg.train.val_every, epoch, "val", split="val")
                if val is not None:
                    score = val[cfg.train.select_metric]  # the config checked that the metric exists
                    if state["best"] is None or score > state["best"]:
                        state["best"], state["best_epoch"] = score, epoch + 1
                        checkpoint(best_path)
                # a curve to watch (e.g. test kNN accuracy, as the seen-class papers plot): logged, never selected on
                mon = cfg.train.monitor_split
                evaluate_and_log(mon, cfg.train.monitor_every, epoch, f"{mon} (monitored)", split=mon, when="monitor")
                checkpoint(last_path)
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)

    results["train_seconds"] = time.time() - t_start
    # Final test evaluation with the checkpoint selected on the validation split (never on test).
    if best_path.exists():
        model.load_state_dict(load_checkpoint(best_path, map_location=device)["model"])
        results["selected_epoch"] = state["best_epoch"]
    results["test"] = evaluate(model, cfg, ctx, cfg.data.test_split)
    log({"split": "test", "epoch": state["epoch"], "step": state["step"], "when": "final", **results["test"]})
    if ctx.is_main:
        (out / "results.json").write_text(json.dumps(results, indent=2))
        writer.close()
        if cfg.train.report:
            from deepmetric.serve.report import write_report

            try:
                write_report(out)
            except Exception as exc:  # a plot must never cost a finished training run
                say(f"[yellow]warning[/]: the visual report failed ({type(exc).__name__}: {exc}); retry with deepmetric report {out}")
    return results


class _PooledFeatures(nn.Module):
    """images -> L2-normalised pooled backbone features of an embedding model (its head is not used)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)  # embed() restores this wrapper's mode, which must be the model's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_normalize(self.model.features(x).float())


def neighbour_table(model: nn.Module, cfg: RunConfig, ctx: DistContext) -> torch.Tensor:
    """(N,) long: each training instance's nearest other instance (self excluded), searched in the
    L2-normalised pooled backbone features (``data.neighbour_space: backbone``, the released CUB code's
    pool5 features, SPEC §1) or in the embedding (``embedding``), of the training split under the eval
    transform."""
    train_eval = build_dataset(cfg, cfg.data.train_split, train=False)
    net = _unwrap(model)
    if cfg.data.neighbour_space == "backbone":
        net = _PooledFeatures(net)
    emb, _ = _embed_dataset(net, train_eval, cfg, ctx)
    _, idx = topk_search(emb, k=1)  # the training set is its own gallery: self excluded
    return torch.as_tensor(idx[:, 0]).long()


def _refresh_neighbours(model: nn.Module, cfg: RunConfig, ctx: DistContext, data) -> None:
    """Neighbour positives (released CUB code): each epoch, each instance's nearest neighbour
    (:func:`neighbour_table`) becomes its second view with probability p."""
    data.dataset.set_neighbours(neighbour_table(model, cfg, ctx), cfg.data.neighbour_positives, cfg.seed)
