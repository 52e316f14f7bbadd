"""Warm-up schedules of loss terms (start_epoch, ramp_epochs): the factor, skipped terms, the
config checks, the build path, exact resume, and a real training run."""

from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

from conftest import tiny_config_dict
from pdeseg.build import build_loss
from pdeseg.config import LossTerm, apply_overrides, config_from_dict
from pdeseg.errors import ConfigError
from pdeseg.losses.composite import CompositeLoss, warmup_factor
from pdeseg.losses.segmentation import CrossEntropyLoss, SoftDiceLoss
from pdeseg.losses.registry import LOSSES, LossEntry


class CountingLoss(nn.Module):
    """A loss term that counts its calls: mean squared logit (never 0 on random logits)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return logits.float().pow(2).mean()


@pytest.fixture
def counting(monkeypatch):
    """Register ``counting`` in the loss registry for this test only."""
    monkeypatch.setitem(LOSSES, "counting", LossEntry(CountingLoss, "test term that counts its calls"))


def _loss(terms: list[dict]) -> CompositeLoss:
    """A loss built from config terms as training builds it (config validation, then build_loss)."""
    return build_loss(config_from_dict({"loss": {"terms": terms}}).loss)


def _batch(seed: int = 0):
    torch.manual_seed(seed)
    return torch.randn(2, 3, 8, 8, requires_grad=True), torch.randint(0, 3, (2, 8, 8))


@pytest.mark.parametrize(("start", "ramp", "factors"), [
    (5, 4, [0, 0, 0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1]),  # the docstring's example
    (3, 0, [0, 0, 0, 1, 1, 1]),  # switched on at once
    (0, 0, [1, 1, 1]),  # no schedule
    (0, 2, [0.5, 1, 1]),  # ramped in from the first epoch
    (2, 1, [0, 0, 1, 1]),  # a one-epoch ramp is a switch
    (1, 3, [0, 1 / 3, 2 / 3, 1, 1]),
])
def test_factor_is_zero_before_start_then_linear_over_the_ramp(start, ramp, factors):
    assert [warmup_factor(e, start, ramp) for e in range(len(factors))] == pytest.approx(factors, abs=0)
    loss = CompositeLoss([("ce", 1.0, CrossEntropyLoss())], [(start, ramp)])
    for e, f in enumerate(factors):
        loss.set_epoch(e)
        assert loss.factors() == [f]
    # the formula as documented: min(1, (e - start + 1) / ramp) from start on
    for e in range(start, start + ramp + 3):
        assert warmup_factor(e, start, ramp) == (min(1.0, (e - start + 1) / ramp) if ramp else 1.0)


def test_a_term_before_its_start_is_not_computed_and_adds_exactly_zero(counting):
    logits, target = _batch()
    scheduled = _loss([{"name": "ce"}, {"name": "counting", "weight": 2.0, "start_epoch": 2, "ramp_epochs": 2}])
    plain = _loss([{"name": "ce"}])
    spy = scheduled.terms[1]
    ce = plain(logits, target)
    for epoch in (0, 1):
        scheduled.set_epoch(epoch)
        value = scheduled(logits, target)
        assert torch.equal(value, ce) and spy.calls == 0
        value.backward()  # still a loss with gradients
    assert scheduled.scheduled_factors() == {"counting": 0.0}
    penalty = logits.detach().pow(2).mean()
    for epoch, factor in ((2, 0.5), (3, 1.0), (10, 1.0)):
        scheduled.set_epoch(epoch)
        value = scheduled(logits, target)
        assert value.item() == pytest.approx((ce + 2.0 * factor * penalty).item(), rel=1e-6)
        assert scheduled.scheduled_factors() == {"counting": factor}
    assert spy.calls == 3


def test_every_head_and_term_skipped_still_gives_a_loss_with_zero_gradient(counting):
    """Only a CompositeLoss made directly can have every term off (a config refuses it)."""
    logits, target = _batch()
    spy = CountingLoss()
    loss = CompositeLoss([("counting", 1.0, spy)], [(1, 0)])
    loss.set_epoch(0)
    value = loss(logits, target)
    assert value.item() == 0.0 and value.requires_grad and spy.calls == 0
    value.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    heads = [torch.randn(2, 3, 8, 8, requires_grad=True), torch.randn(2, 3, 4, 4, requires_grad=True)]
    loss(heads, target).backward()
    assert all(h.grad is not None for h in heads) and spy.calls == 0


def test_without_set_epoch_every_factor_is_one():
    logits, target = _batch()
    loss = CompositeLoss([("ce", 1.0, CrossEntropyLoss()), ("dice", 0.5, SoftDiceLoss())], [(0, 0), (4, 2)])
    full = CompositeLoss([("ce", 1.0, CrossEntropyLoss()), ("dice", 0.5, SoftDiceLoss())])
    assert loss.factors() == [1.0, 1.0] and torch.equal(loss(logits, target), full(logits, target))
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        loss.set_epoch(-1)
    with pytest.raises(ValueError, match="2 schedules for 1"):
        CompositeLoss([("ce", 1.0, CrossEntropyLoss())], [(0, 0), (1, 1)])


@pytest.mark.parametrize(("terms", "message"), [
    ([{"name": "ce", "start_epoch": -1}], r"loss\.terms\[0\]\.start_epoch = -1: .*greater than or equal to 0"),
    ([{"name": "ce"}, {"name": "tv", "ramp_epochs": -2}], r"loss\.terms\[1\]\.ramp_epochs = -2: .*greater than or equal to 0"),
    ([{"name": "ce"}, {"name": "tv", "ramp_epochs": 1.5}], r"loss\.terms\[1\]\.ramp_epochs = 1\.5: .*valid integer"),
    ([{"name": "ce", "start_epoch": 1}, {"name": "dice", "start_epoch": 3}],
     r"no term with a positive weight starts at epoch 0 \(start_epoch: ce 1, dice 3\).*start_epoch: 0"),
    # a weight-0 term at epoch 0 does not count as a loss
    ([{"name": "ce", "weight": 0}, {"name": "dice", "start_epoch": 2}], r"no term with a positive weight starts at epoch 0"),
])
def test_bad_schedules_are_config_errors(terms, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"loss": {"terms": terms}})


def test_schedule_keys_are_not_term_options():
    term = LossTerm(name="dice", weight=1.0, start_epoch=2, ramp_epochs=3, eps=0.5)
    assert term.options == {"eps": 0.5} and term.scheduled and not LossTerm(name="dice").scheduled
    # a misspelt key is an unknown option of the term, and the message names the schedule keys
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['start_epochs'\].*start_epoch, ramp_epochs"):
        _loss([{"name": "ce"}, {"name": "dice", "start_epochs": 2}])
    # the command line's --set path
    data = apply_overrides({}, ["loss.terms=[{name: ce}, {name: tv, weight: 0.1, start_epoch: 3, ramp_epochs: 2}]"])
    assert config_from_dict(data).loss.terms[1].start_epoch == 3
    with pytest.raises(ConfigError, match=r"loss\.terms\[0\]\.start_epoch = -1"):
        config_from_dict(apply_overrides({}, ["loss.terms=[{name: ce, start_epoch: -1}]"]))


def test_a_loss_built_from_the_config_honours_the_schedule():
    cfg_terms = [{"name": "ce"}, {"name": "dice", "weight": 0.5},
                 {"name": "tv", "weight": 0.2, "eps": 0.01, "start_epoch": 1, "ramp_epochs": 2},
                 {"name": "phase_field", "weight": 0.3, "start_epoch": 2}]
    loss = _loss(cfg_terms)
    assert loss.names == ["ce", "dice", "tv", "phase_field"] and loss.schedules == [(0, 0), (0, 0), (1, 2), (2, 0)]
    assert loss.terms[2].eps == 0.01  # the term's own option still reaches its constructor
    logits, target = _batch(1)
    parts = [_loss([{"name": t["name"], **{k: v for k, v in t.items() if k not in ("name", "weight", "start_epoch", "ramp_epochs")}}])(logits, target)
             for t in cfg_terms]
    for epoch, (f_tv, f_pf) in enumerate([(0, 0), (0.5, 0), (1, 1), (1, 1)]):
        loss.set_epoch(epoch)
        expected = parts[0] + 0.5 * parts[1] + 0.2 * f_tv * parts[2] + 0.3 * f_pf * parts[3]
        assert loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
        assert loss.scheduled_factors() == {"tv": f_tv, "phase_field": f_pf}


def test_duplicate_names_get_their_index_in_the_log():
    loss = _loss([{"name": "ce"}, {"name": "dice", "start_epoch": 1}, {"name": "dice", "eps": 0.5, "ramp_epochs": 2}])
    loss.set_epoch(0)
    assert loss.scheduled_factors() == {"dice_1": 0.0, "dice_2": 0.5}


def test_set_epoch_on_a_fresh_loss_equals_stepping_through_the_epochs(counting):
    """What --resume relies on: the weights are a function of the epoch number alone."""
    terms = [{"name": "ce"}, {"name": "counting", "weight": 0.7, "start_epoch": 2, "ramp_epochs": 3},
             {"name": "tv", "weight": 0.1, "ramp_epochs": 4}]
    stepped = _loss(terms)
    logits, target = _batch(2)
    for k in range(8):
        stepped.set_epoch(k)
        value = stepped(logits, target)
        fresh = _loss(terms)
        fresh.set_epoch(k)
        assert torch.equal(fresh(logits, target), value), f"epoch {k}"
        assert fresh.factors() == stepped.factors() and fresh.scheduled_factors() == stepped.scheduled_factors()


def test_training_sets_the_epoch_logs_the_factor_and_resumes_the_schedule(phantom_root, tmp_path, monkeypatch):
    """A real run: the trainer sets the loss's epoch (training and validation loss), metrics.csv
    has the factor of the scheduled term only, and an interrupted run resumes the same rows."""
    import pdeseg.training.run as run
    from pdeseg.checkpoint import load_checkpoint
    from pdeseg.training.run import train_model

    seen = []  # the validation loss's factors, each time validation scores

    def spy_score(predictor, cases, scope, loss_fn, *args, **kwargs):
        seen.append(loss_fn.factors())
        return score(predictor, cases, scope, loss_fn, *args, **kwargs)

    score = run.score
    monkeypatch.setattr(run, "score", spy_score)

    data = tiny_config_dict(phantom_root, tmp_path, epochs=3)
    data["loss"] = {"terms": [{"name": "ce"}, {"name": "dice"},
                              {"name": "tv", "weight": 5.0, "start_epoch": 1, "ramp_epochs": 2}]}
    cfg = config_from_dict(data)
    model = cfg.models[0]
    straight = train_model(cfg, model, tmp_path / "straight", progress=False)
    with (tmp_path / "straight" / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["loss_factor_tv"]) for r in rows] == [0.0, 0.5, 1.0]
    assert not any(k.startswith("loss_factor_") and k != "loss_factor_tv" for k in rows[0])
    assert [r["loss_factor_tv"] for r in straight.history] == [0.0, 0.5, 1.0]
    assert seen == [[1.0, 1.0, 0.0], [1.0, 1.0, 0.5], [1.0, 1.0, 1.0]]  # validation used each epoch's weights

    train_model(cfg, model, tmp_path / "resumed", progress=False, stop_after=1)
    train_model(cfg, model, tmp_path / "resumed", resume=True, progress=False)
    history = lambda run: [{k: v for k, v in r.items() if not k.endswith("time_s")}  # noqa: E731
                           for r in load_checkpoint(tmp_path / run / "last.pt")["training"]["history"]]
    assert history("straight") == history("resumed")


def test_schedules_probably_not_meant_are_warned_about(caplog):
    from pdeseg.build import _check_loss_schedule

    cfg = config_from_dict({"loss": {"terms": [{"name": "ce"}, {"name": "tv", "start_epoch": 4}]},
                            "train": {"epochs": 4, "monitor": "train_loss"}})
    with caplog.at_level("WARNING", logger="pdeseg.build"):
        _check_loss_schedule(cfg)
    assert "tv (start_epoch 4) never switch on in train.epochs 4" in caplog.text
    assert "best.pt will favour epochs before a term switched on" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="pdeseg.build"):
        _check_loss_schedule(cfg.copy_with(train={"epochs": 5, "monitor": "dice_mean"}))
    assert caplog.text == ""
