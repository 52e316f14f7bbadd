"""nnUNetTrainer_WallClock: nnU-Net's default trainer, trained for a fixed wall-clock budget.

Installed by ``benchmarks/nnunet/install.sh`` next to ``nnUNetTrainer.py`` inside the venv's
``nnunetv2/training/nnUNetTrainer/`` (where ``nnUNetv2_train -tr`` and ``nnUNetv2_predict`` look
for trainers). Everything except the length of training is stock ``nnUNetTrainer``: network,
plans, loss, augmentation, SGD with Nesterov momentum, initial LR 1e-2, poly exponent 0.9,
per-epoch validation pseudo-Dice, checkpoint_best / checkpoint_final, and the final
sliding-window validation of the fold.

Environment variables (read when the trainer is built; only ``NNUNET_WALLCLOCK_S`` is required,
and only for training):

``NNUNET_WALLCLOCK_S``          budget in seconds for the training loop (train iterations and the
                                per-epoch validation iterations). The clock starts after nnU-Net's
                                set-up (data loaders started, dataset unpacked) and stops before
                                checkpoint_final.pth is written and before the final validation
                                of the fold, which nnUNetv2_train always runs afterwards.
``NNUNET_WALLCLOCK_LR``         ``budget`` (default): the poly schedule runs over the budget,
                                lr = 1e-2 * (1 - elapsed / budget) ** 0.9, set at the start of
                                each epoch; ``epochs``: stock nnU-Net schedule over
                                ``NNUNET_MAX_EPOCHS`` epochs, cut off when the budget is spent.
``NNUNET_ITERS_PER_EPOCH``      training iterations per epoch (stock: 250).
``NNUNET_VAL_ITERS_PER_EPOCH``  validation iterations per epoch (stock: 50).
``NNUNET_MAX_EPOCHS``           an upper bound on epochs (default 1000, stock nnU-Net's count).
``NNUNET_NUM_THREADS``          torch intra-op threads (nnUNetv2_train -device cpu sets all cores).
``NNUNET_SKIP_FINAL_VAL``       ``1``: skip the sliding-window validation of the fold's held-out cases
                                that nnUNetv2_train runs after training (with mirroring TTA and a
                                pool of nnUNet_def_n_proc export processes: slow on a CPU). Predict
                                and score the cases yourself instead; ``--val`` later still works
                                with this unset.

When training stops: a training iteration starts only if it is expected to finish, together
with the epoch's validation iterations and bookkeeping (logging, checkpoint_best, progress.png),
within the budget. The expectations are the last measured durations: of one training iteration,
and of the previous epoch's validation + bookkeeping (in the first epoch, before any was measured,
half a training iteration per validation iteration). The epoch in which the budget runs out ends
as every epoch does, with fewer iterations. The first iteration always runs. So the loop ends
close to the budget (within the noise of those durations) instead of overrunning it by a
validation pass; the numbers actually spent are written to ``wallclock.json`` in the fold's
output folder (``train_loop_s``, ``overrun_s``, epochs, iterations, last LR).

Why the schedule follows the budget: stock nnU-Net decays the LR over 1000 epochs; cut after a
few epochs it would stop at nearly the initial LR, which no one would call a trained nnU-Net. A
poly schedule over elapsed time is what nnU-Net would do with the number of epochs that fit the
budget (lr at epoch e = 1e-2 * (1 - e / E) ** 0.9 with E = budget / epoch time) without having to
estimate E from a first epoch that includes warm-up, and it adapts when the machine's load changes
during the run. ``NNUNET_WALLCLOCK_LR=epochs`` gives the cut-off behaviour instead.

``--c`` (continue) counts the time of the epochs already logged in the checkpoint against the
budget. Multi-GPU (DDP) training is not supported: the ranks' clocks could disagree on when to stop.
"""

from __future__ import annotations

import json
import os
from time import time

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join

from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


def _env(name: str, cast, default):
    value = os.environ.get(name, "").strip()
    if value == "":
        return default
    try:
        return cast(value)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={value!r} is not a valid {cast.__name__}") from e


class nnUNetTrainer_WallClock(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.skip_final_val = _env("NNUNET_SKIP_FINAL_VAL", int, 0) == 1
        self.budget_s = _env("NNUNET_WALLCLOCK_S", float, None)   # None is fine for --val / inference
        self.lr_mode = os.environ.get("NNUNET_WALLCLOCK_LR", "budget").strip() or "budget"
        if self.lr_mode not in ("budget", "epochs"):
            raise ValueError(f"NNUNET_WALLCLOCK_LR must be 'budget' or 'epochs', not {self.lr_mode!r}")
        self.num_iterations_per_epoch = _env("NNUNET_ITERS_PER_EPOCH", int, self.num_iterations_per_epoch)
        self.num_val_iterations_per_epoch = _env("NNUNET_VAL_ITERS_PER_EPOCH", int,
                                                 self.num_val_iterations_per_epoch)
        self.num_epochs = _env("NNUNET_MAX_EPOCHS", int, self.num_epochs)
        threads = _env("NNUNET_NUM_THREADS", int, None)
        if threads:
            torch.set_num_threads(threads)
        if self.budget_s is not None and self.budget_s <= 0:
            raise ValueError("NNUNET_WALLCLOCK_S must be > 0")
        self._time_before_s = 0.0      # training time already spent (continued runs)
        self._clock_start = None
        self.print_to_log_file(
            f"WallClock: budget {self.budget_s} s, LR schedule over the {self.lr_mode}, "
            f"{self.num_iterations_per_epoch} train / {self.num_val_iterations_per_epoch} val iterations per epoch, "
            f"at most {self.num_epochs} epochs, torch threads {torch.get_num_threads()}"
            f"{', final validation skipped' if self.skip_final_val else ''}")

    # ------------------------------------------------------------------ the clock
    def _elapsed(self) -> float:
        return self._time_before_s + (time() - self._clock_start)

    def _logged_epoch_time(self) -> float:
        """Seconds spent in the epochs restored from a checkpoint (0 for a new run)."""
        starts = self.logger.get_value('epoch_start_timestamps', step=None) or []
        ends = self.logger.get_value('epoch_end_timestamps', step=None) or []
        return float(sum(e - s for s, e in zip(starts, ends)))

    def _lr_follows_budget(self) -> bool:
        return self.lr_mode == "budget" and self.budget_s is not None

    # ------------------------------------------------------------------ schedule
    def configure_optimizers(self):
        optimizer, lr_scheduler = super().configure_optimizers()
        if self._lr_follows_budget():
            # same poly formula, in seconds instead of epochs: step(elapsed) -> lr0 * (1 - elapsed / budget) ** 0.9
            lr_scheduler = PolyLRScheduler(optimizer, self.initial_lr, self.budget_s)
        return optimizer, lr_scheduler

    def on_train_epoch_start(self):
        self.network.train()
        if self._lr_follows_budget():
            self.lr_scheduler.step(min(self._elapsed(), self.budget_s * 0.999999))
        else:
            self.lr_scheduler.step(self.current_epoch)
        self.print_to_log_file('')
        self.print_to_log_file(f'Epoch {self.current_epoch}')
        self.print_to_log_file(f"Current learning rate: {np.round(self.optimizer.param_groups[0]['lr'], decimals=5)}")
        self.print_to_log_file(f"WallClock: {self._elapsed():.1f} of {self.budget_s:.1f} s spent")
        self.logger.log('lrs', self.optimizer.param_groups[0]['lr'], self.current_epoch)

    # ------------------------------------------------------------------ the loop
    def run_training(self):
        if self.budget_s is None:
            raise RuntimeError("nnUNetTrainer_WallClock needs the budget: set NNUNET_WALLCLOCK_S (seconds)")
        if self.is_ddp:
            raise NotImplementedError("nnUNetTrainer_WallClock supports single-process training only")
        t_setup = time()
        self.on_train_start()
        setup_s = time() - t_setup
        self._time_before_s = self._logged_epoch_time()
        self._clock_start = time()
        first_epoch, iterations, stopped_by = self.current_epoch, 0, "max_epochs"
        t_iter = 0.0      # duration of the last training iteration
        t_tail = None     # duration of the last epoch's validation iterations and bookkeeping

        def fits() -> bool:
            """Is one more training iteration, plus this epoch's validation and bookkeeping, expected to fit?"""
            tail = t_tail if t_tail is not None else 0.5 * t_iter * self.num_val_iterations_per_epoch
            return self._elapsed() + t_iter + tail <= self.budget_s

        while self.current_epoch < self.num_epochs:
            if not fits():
                stopped_by = "budget"
                break
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = []
            for _ in range(self.num_iterations_per_epoch):
                if train_outputs and not fits():
                    stopped_by = "budget"
                    break
                t = time()
                train_outputs.append(self.train_step(next(self.dataloader_train)))
                t_iter = time() - t
                iterations += 1
            if len(train_outputs) < self.num_iterations_per_epoch:
                self.print_to_log_file(f"WallClock: budget spent after {len(train_outputs)} of "
                                       f"{self.num_iterations_per_epoch} iterations of this epoch")
            t = time()
            self.on_train_epoch_end(train_outputs)

            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = []
                for _ in range(self.num_val_iterations_per_epoch):
                    val_outputs.append(self.validation_step(next(self.dataloader_val)))
                self.on_validation_epoch_end(val_outputs)

            self.on_epoch_end()
            t_tail = time() - t
            if stopped_by == "budget":
                break

        loop_s = self._elapsed()
        summary = {
            "trainer": self.__class__.__name__,
            "budget_s": self.budget_s,
            "train_loop_s": round(loop_s, 2),
            "overrun_s": round(loop_s - self.budget_s, 2),
            "setup_s": round(setup_s, 2),
            "epochs_this_run": self.current_epoch - first_epoch,
            "epochs_total": self.current_epoch,
            "iterations_this_run": iterations,
            "iterations_per_epoch": self.num_iterations_per_epoch,
            "val_iterations_per_epoch": self.num_val_iterations_per_epoch,
            "lr_mode": self.lr_mode,
            "last_lr": float(self.optimizer.param_groups[0]['lr']),
            "stopped_by": stopped_by,
            "torch_threads": torch.get_num_threads(),
            "device": str(self.device),
        }
        self.print_to_log_file(f"WallClock: stopped by {stopped_by} after {loop_s:.1f} s "
                               f"(budget {self.budget_s:.1f} s), {summary['epochs_this_run']} epochs, "
                               f"{iterations} iterations")
        t_end = time()
        self.on_train_end()    # writes checkpoint_final.pth, stops the data loaders
        summary["final_checkpoint_s"] = round(time() - t_end, 2)
        if self.local_rank == 0:
            with open(join(self.output_folder, "wallclock.json"), "w") as f:
                json.dump(summary, f, indent=1)

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.skip_final_val:
            self.print_to_log_file("WallClock: final validation skipped (NNUNET_SKIP_FINAL_VAL=1)")
            return
        super().perform_actual_validation(save_probabilities)
