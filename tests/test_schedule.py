"""Learning-rate schedules with linear warm-up: the sequence, the config checks, exact resume."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from pdeseg.build import build_optimizer, build_scheduler
from pdeseg.config import TrainConfig, config_from_dict
from pdeseg.errors import ConfigError
from pdeseg.nn.pde.cable import CableBlock


def _setup(steps_per_epoch: int = 10, **train):
    t = TrainConfig(**train)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    optimizer = build_optimizer(t, model)
    return t, model, optimizer, build_scheduler(t, optimizer, steps_per_epoch)


def _lrs(optimizer, scheduler, steps: int) -> list[list[float]]:
    """The lr of every group used by each of the next ``steps`` optimiser steps."""
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return out


def test_cosine_with_warmup_ramps_linearly_then_decays_to_zero():
    t, _, opt, sched = _setup(10, epochs=5, lr=1e-2, scheduler="cosine", warmup_epochs=1.5)
    total, warm = 50, 15
    lrs = [g[0] for g in _lrs(opt, sched, total)]
    # step k < W runs at lr (k + 1) / (W + 1): near 0 at the start, the full lr at step W
    assert lrs[0] == pytest.approx(1e-2 / (warm + 1))
    for k in range(warm):
        assert lrs[k] == pytest.approx(1e-2 * (k + 1) / (warm + 1))
    assert lrs[warm] == pytest.approx(1e-2)
    assert max(lrs) == pytest.approx(1e-2)
    # then the cosine over the remaining 35 steps
    for k in range(warm, total):
        assert lrs[k] == pytest.approx(0.5e-2 * (1 + math.cos(math.pi * (k - warm) / (total - warm))), abs=1e-12)
    assert lrs[-1] < 1e-4
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # after the last step


def test_warmup_with_no_schedule_holds_the_lr_afterwards():
    _, _, opt, sched = _setup(4, epochs=3, lr=1e-3, scheduler="none", warmup_epochs=1)
    lrs = [g[0] for g in _lrs(opt, sched, 12)]
    assert lrs[:5] == pytest.approx([1e-3 * (k + 1) / 5 for k in range(4)] + [1e-3])
    assert lrs[4:] == pytest.approx([1e-3] * 8)


def test_without_warmup_the_schedules_are_unchanged():
    _, _, opt, sched = _setup(10, epochs=2, lr=1e-2, scheduler="cosine")
    assert isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert _lrs(opt, sched, 1)[0][0] == pytest.approx(1e-2)
    assert _setup(10, epochs=2, scheduler="none")[3] is None
    assert isinstance(_setup(10, epochs=2, scheduler="onecycle")[3], torch.optim.lr_scheduler.OneCycleLR)


def test_warmup_scales_every_parameter_group_by_its_own_lr():
    t = TrainConfig(epochs=4, lr=1e-2, pde_lr_mult=10.0, scheduler="cosine", warmup_epochs=1)
    model = nn.Sequential(CableBlock(4), nn.Conv2d(4, 2, 3))
    opt = build_optimizer(t, model)
    sched = build_scheduler(t, opt, 3)
    lrs = _lrs(opt, sched, 4)
    base = [g["initial_lr"] for g in opt.param_groups]
    assert sorted(set(base)) == pytest.approx([1e-2, 1e-1])
    for group, lr in enumerate(base):
        assert lrs[0][group] == pytest.approx(lr / 4)
        assert lrs[3][group] == pytest.approx(lr)


@pytest.mark.parametrize("scheduler", ["cosine", "none"])
@pytest.mark.parametrize("stop", [3, 7, 15])  # inside the warm-up, at its end, in the decay
def test_state_dict_round_trip_continues_the_same_lr_sequence(scheduler, stop):
    """As --resume does: optimiser and scheduler states through torch.save / torch.load(weights_only=True)."""
    kw = {"epochs": 4, "lr": 3e-3, "scheduler": scheduler, "warmup_epochs": 1.5, "optimizer": "adamw"}
    _, _, opt, sched = _setup(5, **kw)
    reference = _lrs(opt, sched, 20)

    _, _, opt, sched = _setup(5, **kw)
    first = _lrs(opt, sched, stop)
    buffer = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    _, _, opt2, sched2 = _setup(5, **kw)  # a fresh process: new model, optimiser and scheduler
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    rest = _lrs(opt2, sched2, 20 - stop)
    assert first + rest == reference  # bit for bit


@pytest.mark.parametrize("train, message", [
    ({"scheduler": "onecycle", "warmup_epochs": 1}, "does not combine with scheduler onecycle"),
    ({"scheduler": "cosine", "epochs": 3, "warmup_epochs": 3}, r"warmup_epochs \(3\) must be less than epochs \(3\)"),
    ({"scheduler": "none", "epochs": 2, "warmup_epochs": 5}, "must be less than epochs"),
    ({"scheduler": "cosine", "warmup_epochs": -1}, "warmup_epochs"),
])
def test_bad_warmup_combinations_are_config_errors(train, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"train": train})


def test_warmup_is_read_from_yaml_overrides():
    from pdeseg.config import load_config

    cfg = load_config(None, ["train.scheduler=cosine", "train.warmup_epochs=0.5", "train.epochs=2"])
    assert cfg.train.warmup_epochs == 0.5
    assert config_from_dict({}).train.warmup_epochs == 0  # the default changes nothing
