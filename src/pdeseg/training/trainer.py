"""Training: Adam(W) + one-cycle, CE + Dice, mixed precision, best/last checkpoints, resume, DDP.

The run folder of one model holds ``config.yaml`` (resolved), ``split.json``,
``metrics.csv`` (one row per epoch: loss, pixel accuracy, mean IoU, Dice on train and
validation), ``curves.png`` (those curves), ``tb/`` (TensorBoard), ``best.pt`` (best validation
score) and ``last.pt`` (everything needed to resume). Under ``torchrun`` each process
trains on its shard of the training slices (DistributedDataParallel); rank 0 validates,
logs and writes files.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm.auto import tqdm

from pdeseg.config import ExperimentConfig, ModelConfig, save_config
from pdeseg.data.formats import get_format
from pdeseg.data.setup import PreparedData, prepare_data
from pdeseg.data.slices import SliceDataset
from pdeseg.data.splits import save_split
from pdeseg.data.transforms import build_train_transform
from pdeseg.losses.segmentation import CEDiceLoss
from pdeseg.nn.output import output_channels, predicted_classes
from pdeseg.registry import MODELS, build_model, count_parameters
from pdeseg.training.checkpoint import load_checkpoint, plain_state_dict, save_checkpoint
from pdeseg.training.runtime import (
    autocast,
    barrier,
    init_distributed,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from pdeseg.training.validate import evaluate_loader

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    best_score: float
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)


def model_kwargs(cfg: ExperimentConfig, model_cfg: ModelConfig) -> dict[str, Any]:
    """Constructor kwargs: the data and the output head fix channels in/out, the config adds the rest."""
    out = output_channels(cfg.num_classes, cfg.output)
    return {"spatial_dims": 2, "in_channels": len(cfg.data.modalities), "out_channels": out, **model_cfg.kwargs}


def preprocessing_info(cfg: ExperimentConfig, model_name: str) -> dict[str, Any]:
    d = cfg.data
    return {
        "format": d.format,
        "modalities": list(d.modalities),
        "normalization": d.normalization,
        "spatial_size": list(d.spatial_size) if d.spatial_size else None,
        "resize": d.resize,
        "divisor": MODELS[model_name].divisor,
        "num_classes": cfg.num_classes,
    }


def param_groups(model: nn.Module, lr: float, pde_lr_mult: float = 1.0) -> list[dict[str, Any]]:
    """Optimizer groups: the PDE block's parameters (a module named ``pde``) at ``lr * pde_lr_mult``,
    everything else at ``lr``. Its few coefficients barely move at the network's rate."""
    pde = [p for n, p in model.named_parameters() if n.split(".")[0] == "pde"]
    ids = {id(p) for p in pde}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": rest, "lr": lr}]
    if pde:
        groups.append({"params": pde, "lr": lr * pde_lr_mult})
    return groups


def _make_optimizer(cfg: ExperimentConfig, model: nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    groups = param_groups(model, t.lr, t.pde_lr_mult)
    if t.optimizer == "adam":
        return torch.optim.Adam(groups, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=t.weight_decay)
    return torch.optim.SGD(groups, momentum=0.9, weight_decay=t.weight_decay)


def _make_scheduler(cfg: ExperimentConfig, optimizer, steps_per_epoch: int):
    t = cfg.train
    total = t.epochs * steps_per_epoch
    if t.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total)
    if t.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return None


def parameter_digest(model: nn.Module) -> str:
    """SHA-256 of all parameters (bitwise), to show DDP replicas hold identical weights."""
    h = hashlib.sha256()
    for name, p in sorted(getattr(model, "module", model).named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def _check_replicas(model: nn.Module, run_dir: Path, rank: int, world: int) -> None:
    digests: list[str | None] = [None] * world
    dist.all_gather_object(digests, parameter_digest(model))
    if rank == 0:
        same = len(set(digests)) == 1
        (run_dir / "replicas.json").write_text(json.dumps({"world_size": world, "digests": digests, "identical": same}, indent=1))
        (log.info if same else log.error)("DDP replicas hold %s weights after training", "identical" if same else "DIFFERENT")


def train_model(
    cfg: ExperimentConfig,
    model_cfg: ModelConfig,
    run_dir: str | Path,
    resume: bool = False,
    data: PreparedData | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train one model of ``cfg`` into ``run_dir``.

    Args:
        cfg: resolved experiment config.
        model_cfg: which registered model to train.
        run_dir: this model's run folder (created).
        resume: continue from ``run_dir/last.pt`` (its split and epoch counter).
        data: prepared data to reuse (else prepared from ``cfg``, reusing ``split.json``).
        progress: show progress bars.
        stop_after: train at most this many epochs in this call, then return (for jobs
            with a wall-clock limit; ``resume=True`` continues with the same schedule).
        overwrite: start afresh even if ``run_dir`` already holds a run.

    Returns:
        :class:`TrainResult` with the best validation score and the per-epoch history.

    Raises:
        FileNotFoundError: ``resume`` without ``last.pt`` in ``run_dir``.
        FileExistsError: ``run_dir`` already holds a run and neither ``resume`` nor
            ``overwrite`` is set (so finished work is never silently replaced).
    """
    run_dir = Path(run_dir)
    t = cfg.train
    device = resolve_device(t.device)
    precision = resolve_precision(t.precision, device)
    rank, world = init_distributed(device)
    main = rank == 0
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    split_file = run_dir / "split.json"
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    state = None
    if last_path.is_file() and not (resume or overwrite):
        raise FileExistsError(f"{run_dir} already holds a run (last.pt); continue it with --resume, "
                              "start afresh with --overwrite, or choose another --out")
    if overwrite and not resume and main:
        split_file.unlink(missing_ok=True)  # draw the split from the config again
    if resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"--resume: no {last_path} to resume from (was this run started?)")
        state = load_checkpoint(last_path)
        log.info("resuming %s from epoch %d", run_dir, state["training"]["epoch"])

    if data is None:
        if main:
            data = prepare_data(cfg, split_file, progress=progress)
        barrier()
        if not main:
            data = prepare_data(cfg, split_file, progress=False)
    if main:
        save_split(data.split, split_file)
        save_config(cfg, run_dir / "config.yaml")

    d = cfg.data
    spatial = d.spatial_size
    train_ds = SliceDataset(data.cases("train"), d.slices, d.slice_range, spatial, d.resize, divisor=MODELS[model_cfg.name].divisor)
    if spatial is None:
        spatial = list(train_ds[0]["image"].shape[-2:])
    train_ds.transform = build_train_transform(d.augment, tuple(spatial))
    val_ds = (
        SliceDataset(data.cases("val"), d.slices, d.slice_range, d.spatial_size, d.resize, divisor=MODELS[model_cfg.name].divisor)
        if data.split["val"]
        else None
    )
    log.info("training %s on %d slices, validating on %d (%s, precision %s)", model_cfg.name, len(train_ds),
             len(val_ds) if val_ds else 0, device, precision)

    seed_everything(t.seed)
    kwargs = model_kwargs(cfg, model_cfg)
    model = build_model(model_cfg.name, **kwargs).to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = CEDiceLoss(cfg.loss.ce_weight, cfg.loss.dice_weight, cfg.loss.dice_eps, cfg.loss.dice_include_background).to(device)
    optimizer = _make_optimizer(cfg, model)
    per_rank = math.ceil(len(train_ds) / world)
    steps_per_epoch = max(1, math.ceil(per_rank / t.batch_size))
    scheduler = _make_scheduler(cfg, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")

    fmt = get_format(d.format)
    start_epoch, global_step, best_score, best_epoch, history = 0, 0, -math.inf, -1, []
    if state is not None:
        getattr(model, "module", model).load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        tr = state["training"]
        start_epoch, global_step, best_score, best_epoch, history = tr["epoch"], tr["global_step"], tr["best_score"], tr["best_epoch"], tr["history"]
    train_model_ = DistributedDataParallel(model) if world > 1 else model

    meta = {
        "model": {"name": model_cfg.name, "kwargs": kwargs},
        "preprocessing": preprocessing_info(cfg, model_cfg.name),
        "config": cfg.to_dict(),
        "parameters": count_parameters(model),
    }
    writer = _tensorboard(run_dir) if main else None
    end_epoch = t.epochs if stop_after is None else min(t.epochs, start_epoch + stop_after)
    for epoch in range(start_epoch, end_epoch):
        generator = torch.Generator().manual_seed(t.seed * 100_003 + epoch)
        if world > 1:
            sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=t.seed)
            sampler.set_epoch(epoch)
        else:
            sampler = RandomSampler(train_ds, generator=generator)
        if train_ds.transform is not None:
            train_ds.transform.set_random_state(seed=(t.seed * 1_000_003 + epoch * 7919 + rank) % 2**32)
        loader = DataLoader(train_ds, batch_size=t.batch_size, sampler=sampler, num_workers=d.num_workers, drop_last=False)
        train_model_.train()
        t0 = time.perf_counter()
        running, seen = 0.0, 0
        train_acc = fmt.accumulator()  # per-epoch training metrics, on the augmented batches as trained
        bar = tqdm(loader, desc=f"{model_cfg.name} epoch {epoch + 1}/{t.epochs}", unit="batch", disable=not (progress and main), leave=False)
        for step, batch in enumerate(bar, 1):
            x = batch["image"].to(device, non_blocking=True)
            y = batch["label"].to(device, non_blocking=True)
            if t.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, precision):
                logits = train_model_(x)
            loss = loss_fn(logits.float(), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{model_cfg.name}: non-finite training loss at epoch {epoch + 1}, step {global_step}; lower train.lr or use precision: 32")
            scaler.scale(loss).backward()
            if t.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None:
                scheduler.step()
            global_step += 1
            train_acc.update(predicted_classes(logits.detach()), y, list(batch["case"]))
            running += loss.item() * x.shape[0]
            seen += x.shape[0]
            bar.set_postfix(loss=f"{running / seen:.4f}")
            if not progress and main and step % max(1, len(loader) // 5) == 0:  # logs stand in for the bar
                log.info("%s epoch %d: step %d/%d, loss %.4f, %.1f slices/s", model_cfg.name, epoch + 1, step,
                         len(loader), running / seen, seen / (time.perf_counter() - t0))
        train_time = time.perf_counter() - t0
        row: dict[str, Any] = {"epoch": epoch + 1, "step": global_step, "lr": optimizer.param_groups[0]["lr"],
                               "train_loss": running / max(seen, 1), "train_time_s": train_time}
        row.update({f"train_{k}": v for k, v in _epoch_metrics(train_acc.summary(), fmt).items()})
        if main:
            if val_ds is not None:
                val_loader = DataLoader(val_ds, batch_size=t.val_batch_size, shuffle=False, num_workers=d.num_workers)
                val_loss, acc = evaluate_loader(model, val_loader, device, precision, loss_fn, fmt.accumulator(), t.channels_last)
                summary = acc.summary()
                row["val_loss"] = val_loss
                row.update({f"val_{k}": v for k, v in _epoch_metrics(summary, fmt).items()})
                if t.monitor not in summary:
                    raise KeyError(f"train.monitor {t.monitor!r} is not a validation metric; choose from {', '.join(sorted(summary))}")
                score = summary[t.monitor]["mean"]
            else:
                score = -row["train_loss"]  # no validation cases: keep the lowest training loss
            row["score"] = score
            history.append(row)
            is_best = score > best_score
            if is_best:
                best_score, best_epoch = score, epoch + 1
            training = {"epoch": epoch + 1, "global_step": global_step, "best_score": best_score, "best_epoch": best_epoch, "history": history}
            weights = plain_state_dict(model)
            if is_best:
                save_checkpoint({**meta, "state_dict": weights, "training": training}, best_path)
            save_checkpoint(
                {**meta, "state_dict": weights, "training": training, "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict() if scheduler is not None else None},
                last_path,
            )
            _write_metrics_csv(run_dir / "metrics.csv", history)
            for k, v in row.items():
                if isinstance(v, (int, float)) and v is not None and k != "epoch":
                    writer.add_scalar(k, v, epoch + 1)
            writer.flush()
            log.info(
                "%s epoch %d/%d: train loss %.4f, val %s %.4f%s (%.1f s)",
                model_cfg.name, epoch + 1, t.epochs, row["train_loss"], t.monitor, score, "  *best*" if is_best else "", train_time,
            )
        barrier()
    if world > 1:
        _check_replicas(model, run_dir, rank, world)
    if writer is not None:
        writer.close()
    if main and history:
        from pdeseg.viz.figures import plot_epoch_metrics

        plot_epoch_metrics(history, run_dir / "curves.png", title=f"{cfg.name}: {model_cfg.name}")
    return TrainResult(run_dir, best_score, best_epoch, history)


#: Metrics logged per epoch for training and validation (paper 003: accuracy, mean IoU, Dice).
EPOCH_METRICS = ("accuracy", "iou_mean_all", "iou_mean", "dice_mean")


def _epoch_metrics(summary: dict[str, dict[str, float]], fmt) -> dict[str, float]:
    """Case-mean of the per-epoch metrics and of each region's Dice."""
    keys = list(EPOCH_METRICS) + [f"dice_{r}" for r in fmt.regions]
    return {k: summary[k]["mean"] for k in keys if k in summary}


def train_or_resume(cfg: ExperimentConfig, model_cfg: ModelConfig, run_dir: Path, data: PreparedData, progress: bool = True) -> dict:
    """Train ``run_dir`` to ``cfg.train.epochs``: a new run, a resumed interrupted one, or
    nothing for a finished one (how ``compare`` and ``ablate`` continue). Returns ``last.pt``."""
    last_path = Path(run_dir) / "last.pt"
    started = last_path.is_file()
    last = load_checkpoint(last_path) if started else None
    if last is None or last["training"]["epoch"] < cfg.train.epochs:
        train_model(cfg, model_cfg, run_dir, resume=started, data=data, progress=progress)
        last = load_checkpoint(last_path)
    return last


def _tensorboard(run_dir: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir / "tb"))


def _write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    tmp.replace(path)
