"""The training loop: a :class:`Trainer` that receives built objects and runs small steps.

Per epoch: the loss's warm-up schedule set to the epoch (``loss_fn.set_epoch``, a
function of the epoch number only), :func:`train_step` over the training loader (mixed
precision, gradient clipping, the scheduler stepped per batch), per-case training metrics
on the augmented batches, then validation through the one scoring path, ``best.pt`` when
the monitored score improves and ``last.pt`` (model, optimiser, scheduler, grad scaler,
every RNG state) so that ``--resume`` continues bit for bit. Under ``torchrun`` each
process trains on its shard (DistributedDataParallel), every process scores its share of
the validation cases, and rank 0 writes the run folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from pdeseg.build import EPOCH_METRICS
from pdeseg.checkpoint import plain_state_dict, save_checkpoint
from pdeseg.config import TrainConfig
from pdeseg.inference.score import Scores
from pdeseg.losses.composite import main_logits
from pdeseg.losses.segmentation import split_ignored
from pdeseg.metrics.segmentation import ScoringRules
from pdeseg.nn.output import OutputHead, predicted_classes
from pdeseg.progress import track
from pdeseg.runtime import autocast, barrier, compile_model, rng_state, set_rng_state

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    best_score: float
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)


def train_step(model: nn.Module, batch: dict, loss_fn: nn.Module, optimizer: torch.optim.Optimizer, scaler, t: TrainConfig,
               device: torch.device, precision: str, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimiser step on ``batch``; returns ``(loss, full-resolution logits, target)`` (detached, on ``device``).

    Raises:
        FloatingPointError: the loss is not finite.
    """
    x = batch["image"].to(device, non_blocking=True)
    y = batch["label"].to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, precision):
        out = model(x)
    loss = loss_fn(_float(out), y, **maps_of(batch, device))
    if not torch.isfinite(loss):
        raise FloatingPointError("non-finite training loss; lower train.lr or use train.precision: 32")
    scaler.scale(loss).backward()
    if t.grad_clip:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), main_logits(out).detach(), y


def maps_of(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """``{"maps": (B, M, *spatial)}``: the targets of a cell representation's extra maps, when the
    batch has them (keyword arguments of the loss), else ``{}``."""
    return {"maps": batch["maps"].to(device, non_blocking=True)} if "maps" in batch else {}


def _float(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float()
    if isinstance(out, (list, tuple)):
        return [_float(o) for o in out]
    if isinstance(out, dict):
        return {k: _float(v) for k, v in out.items()}
    return out


@dataclass(frozen=True)
class RunContext:
    """Where and how one training run executes (everything the trainer needs besides the
    built objects it trains).

    Attributes:
        run_dir: where ``best.pt``, ``last.pt``, ``metrics.csv`` and ``tb/`` go (rank 0).
        settings: the config's ``train`` section.
        meta: what every checkpoint carries besides weights (model, preprocessing, config).
        device, precision: the resolved device and precision.
        rank, world: this process's rank and the number of processes.
        channels_last: feed 2D batches in channels-last memory format (the model already is).
        num_workers: data-loader worker processes.
        progress: show progress bars (else log lines).
        name: the model's name, for messages.
        head: what the logit channels mean (None: inferred from their number).
    """

    run_dir: Path
    settings: TrainConfig
    meta: dict[str, Any]
    device: torch.device
    precision: str
    rank: int = 0
    world: int = 1
    channels_last: bool = False
    num_workers: int = 0
    progress: bool = True
    name: str = "model"
    head: OutputHead | None = None


class Trainer:
    """Runs epochs of a built model, loss, optimiser and scheduler over a training set.

    Args:
        model: the network (on ``run.device``).
        loss_fn: ``loss_fn(model output, target) -> scalar``; if it has ``set_epoch`` (a
            :class:`~pdeseg.losses.composite.CompositeLoss`), it is called with the 0-based
            epoch before each epoch, so that the epoch's training and validation losses use
            the same scheduled weights.
        optimizer, scheduler: built for this model (the scheduler may be None).
        train_set: training samples (``{"image", "label", "case"}`` items).
        validate: ``validate(model) -> Scores`` on the validation cases, or None to select
            by training loss (``settings.monitor`` must then be ``train_loss``).
        rules: classes and regions, for the per-epoch training metrics.
        run: where and how the run executes (:class:`RunContext`).
    """

    def __init__(self, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer, scheduler, train_set: Dataset,
                 *, validate: Callable[[nn.Module], Scores] | None, rules: ScoringRules, run: RunContext):
        self.model, self.loss_fn, self.optimizer, self.scheduler = model, loss_fn, optimizer, scheduler
        self.train_set, self.validate, self.rules = train_set, validate, rules
        self.run_dir, self.t, self.meta = Path(run.run_dir), run.settings, run.meta
        self.device, self.precision, self.rank, self.world = run.device, run.precision, run.rank, run.world
        self.num_workers, self.progress, self.name = run.num_workers, run.progress, run.name
        self.head = run.head
        self.channels_last = run.channels_last
        self.scaler = torch.amp.GradScaler(run.device.type, enabled=run.precision == "16-mixed")
        self.epoch, self.global_step, self.best_score, self.best_epoch = 0, 0, -math.inf, -1
        self.history: list[dict[str, Any]] = []
        self.wrapped = DistributedDataParallel(model) if run.world > 1 else model
        if run.settings.compile:  # the step runs the compiled network; weights and checkpoints stay the model's
            self.wrapped = compile_model(self.wrapped, run.device, "train.compile")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from a ``last.pt`` payload: weights, optimiser, scheduler, scaler, counters, RNG."""
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        tr = state["training"]
        self.epoch, self.global_step = tr["epoch"], tr["global_step"]
        self.best_score, self.best_epoch, self.history = tr["best_score"], tr["best_epoch"], tr["history"]
        if state.get("rng"):
            set_rng_state(state["rng"])

    def fit(self, stop_after: int | None = None) -> TrainResult:
        """Train to ``settings.epochs`` (or ``stop_after`` more epochs, for jobs with a time limit)."""
        writer = _tensorboard(self.run_dir) if self.main else None
        end = self.t.epochs if stop_after is None else min(self.t.epochs, self.epoch + stop_after)
        while self.epoch < end:
            row = self.train_epoch()
            self.end_epoch(row, writer)
            barrier()
        if self.world > 1:
            check_replicas(self.model, self.run_dir, self.rank, self.world)
        if writer is not None:
            writer.close()
        return TrainResult(self.run_dir, self.best_score, self.best_epoch, self.history)

    def _loader(self) -> DataLoader:
        t, epoch = self.t, self.epoch
        if self.world > 1:
            sampler = DistributedSampler(self.train_set, num_replicas=self.world, rank=self.rank, shuffle=True, seed=t.seed)
            sampler.set_epoch(epoch)
        else:
            sampler = RandomSampler(self.train_set, generator=torch.Generator().manual_seed(t.seed * 100_003 + epoch))
        if hasattr(self.train_set, "set_epoch"):  # augmentation and patches drawn per (seed, epoch, item)
            self.train_set.set_epoch(epoch)
        return DataLoader(self.train_set, batch_size=t.batch_size, sampler=sampler, num_workers=self.num_workers)

    def train_epoch(self) -> dict[str, Any]:
        """One pass over the training set; returns the epoch's row (loss, metrics, time, and the
        current factor of each loss term on a warm-up schedule, ``loss_factor_<name>``)."""
        if hasattr(self.loss_fn, "set_epoch"):  # loss weights of this epoch, for training and this epoch's validation
            self.loss_fn.set_epoch(self.epoch)
        loader = self._loader()
        self.wrapped.train()
        acc = self.rules.accumulator()  # per-epoch training metrics, on the augmented batches as trained
        running, seen, t0 = 0.0, 0, time.perf_counter()
        bar = track(loader, f"{self.name} epoch {self.epoch + 1}/{self.t.epochs}", "batch", enabled=self.progress and self.main)
        for batch in bar:
            try:
                loss, logits, target = train_step(self.wrapped, batch, self.loss_fn, self.optimizer, self.scaler, self.t,
                                          self.device, self.precision, self.channels_last)
            except FloatingPointError as exc:
                raise FloatingPointError(f"{self.name}, epoch {self.epoch + 1}, step {self.global_step}: {exc}") from None
            if self.scheduler is not None:
                self.scheduler.step()
            self.global_step += 1
            pred, (target, keep) = predicted_classes(logits, self.head), split_ignored(target)
            acc.update(pred if keep is None else pred * keep, target, list(batch["case"]))
            running += loss.item() * logits.shape[0]
            seen += logits.shape[0]
            bar.set_postfix(loss=f"{running / seen:.4f}")
        row: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.global_step, "lr": self.optimizer.param_groups[0]["lr"],
                               "train_loss": running / max(seen, 1), "train_time_s": time.perf_counter() - t0}
        row.update({f"train_{k}": v for k, v in self._epoch_metrics(acc.summary()).items()})
        if hasattr(self.loss_fn, "scheduled_factors"):
            row.update({f"loss_factor_{k}": v for k, v in self.loss_fn.scheduled_factors().items()})
        return row

    def _epoch_metrics(self, summary: dict[str, dict[str, float]]) -> dict[str, float]:
        """Case-mean of the per-epoch metrics and of each region's Dice."""
        keys = list(EPOCH_METRICS) + [f"dice_{r}" for r in self.rules.regions]
        return {k: summary[k]["mean"] for k in keys if k in summary}

    def end_epoch(self, row: dict[str, Any], writer) -> None:
        """Validate, pick the best epoch, write checkpoints, metrics and logs."""
        if self.validate is not None:
            scores = self.validate(self.model)
            summary = scores.summary()
            row["val_loss"] = scores.loss
            row.update({f"val_{k}": v for k, v in self._epoch_metrics(summary).items()})
        if self.t.monitor == "train_loss":
            score = -row["train_loss"]
        else:
            score = summary[self.t.monitor]["mean"]
        row["score"] = score
        self.epoch += 1
        self.history.append(row)
        is_best = score > self.best_score
        if is_best:
            self.best_score, self.best_epoch = score, self.epoch
        if not self.main:
            return
        training = {"epoch": self.epoch, "global_step": self.global_step, "best_score": self.best_score,
                    "best_epoch": self.best_epoch, "history": self.history}
        weights = plain_state_dict(self.model)
        if is_best:
            save_checkpoint({**self.meta, "state_dict": weights, "training": training}, self.run_dir / "best.pt")
        save_checkpoint({**self.meta, "state_dict": weights, "training": training, "optimizer": self.optimizer.state_dict(),
                         "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                         "scaler": self.scaler.state_dict(), "rng": rng_state()}, self.run_dir / "last.pt")
        write_metrics_csv(self.run_dir / "metrics.csv", self.history)
        for k, v in row.items():
            if isinstance(v, (int, float)) and k != "epoch":
                writer.add_scalar(k, v, self.epoch)
        writer.flush()
        log.info("%s epoch %d/%d: train loss %.4f, %s %.4f%s (%.1f s)", self.name, self.epoch, self.t.epochs, row["train_loss"],
                 self.t.monitor if self.t.monitor == "train_loss" else f"val {self.t.monitor} (cache grid)",
                 abs(score) if self.t.monitor == "train_loss" else score, "  *best*" if is_best else "", row["train_time_s"])


def parameter_digest(model: nn.Module) -> str:
    """SHA-256 of all parameters (bitwise), to show DDP replicas hold identical weights."""
    h = hashlib.sha256()
    for name, p in sorted(getattr(model, "module", model).named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def check_replicas(model: nn.Module, run_dir: Path, rank: int, world: int) -> None:
    """Gather every process's parameter digest; rank 0 writes ``replicas.json``."""
    digests: list[str | None] = [None] * world
    dist.all_gather_object(digests, parameter_digest(model))
    if rank == 0:
        same = len(set(digests)) == 1
        (run_dir / "replicas.json").write_text(json.dumps({"world_size": world, "digests": digests, "identical": same}, indent=1))
        (log.info if same else log.error)("DDP replicas hold %s weights after training", "identical" if same else "DIFFERENT")


def _tensorboard(run_dir: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir / "tb"))


def write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    """One row per epoch, written atomically."""
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    tmp.replace(path)
