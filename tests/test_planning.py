"""The planner: fingerprints measured on phantoms, plan decisions on constructed fingerprints,
the YAML with reasons, and the CLI's refusals."""

from __future__ import annotations

import math

import pytest
import yaml

from pdeseg.config import config_from_dict
from pdeseg.data.fingerprint import ChannelStats, ClassStats, Fingerprint
from pdeseg.errors import ConfigError, DeviceError
from pdeseg.planning.emit import plan_yaml
from pdeseg.planning.planner import MIN_STEPS, Costs, parse_duration, plan_from_fingerprint, positional_classes
from pdeseg.planning.cost import StepCost


def _cost(seconds_per_mvox: float = 0.5, bytes_per_vox: float = 2e3):
    """A deterministic stand-in for the device: time and memory linear in the batch's voxels, and
    in the square of the base width (as convolutions are)."""
    calls = []

    def cost(dims, features, patch, batch):
        vox = batch * math.prod(patch)
        calls.append((dims, features, patch, batch))
        return StepCost(0.01 + seconds_per_mvox * vox / 1e6 * (features[0] / 32) ** 2, bytes_per_vox * vox, True)

    return Costs(cost, cost), calls


def _fp(fmt="msd", dims=3, shape=(36, 50, 36), spacing=(1.0, 1.0, 1.0), spacing_range=None, n=200, kinds=("mr",),
        names=("background", "a", "b"), zero=0.0, largest=1.0, polarity=1.0, known=True, channel_names=None,
        p10=None, p90=None, micro=False) -> Fingerprint:
    channels = [ChannelStats(name=(channel_names or [f"c{i}" for i in range(len(kinds))])[i], kind=k, fg_mean=100.0,
                             fg_sd=20.0, fg_p005=-1000.0 if k == "ct" else 10.0, fg_p995=1500.0 if k == "ct" else 300.0,
                             minimum=-1024.0 if k == "ct" else 0.0, maximum=3000.0, integral=True,
                             bright_on_dark=polarity) for i, k in enumerate(kinds)]
    classes = [ClassStats(name=c, voxel_fraction=0.1, cases_present=n, smallest_component=10, median_components=1.0)
               for c in names]
    lo, hi = spacing_range or (spacing, spacing)
    return Fingerprint(format=fmt, root="/data/task", format_options={}, n_cases=n, spatial_dims=dims, spacing_known=known,
                       shape_median=list(map(float, shape)), shape_p10=list(map(float, p10 or shape)),
                       shape_p90=list(map(float, p90 or shape)), spacing_median=list(spacing), spacing_p10=list(lo),
                       spacing_p90=list(hi), zero_fraction=zero, largest_component_share=largest,
                       nonzero_slices=float(shape[2]), channels=channels, classes=classes)


def _check(plan):
    """The plan is a valid config, and its YAML with reasons reads back to the same data."""
    config_from_dict(plan.config)
    text = plan_yaml(plan.config, plan.reasons, ["header"])
    assert yaml.safe_load(text) == plan.config
    return text


def test_isotropic_mr_gets_3d_patches_covering_the_median_case():
    costs, _ = _cost()
    plan = plan_from_fingerprint(_fp(), costs, 3600, 8 * 2**30)
    d, t = plan.config["data"], plan.config["train"]
    assert d["mode"] == "patches" and d["spatial_size"] == [40, 56, 40]  # nnU-Net's patch for Hippocampus
    assert d["target_spacing"] is None and d["normalization"] == "zscore_all"
    assert plan.config["models"][0]["kwargs"]["features"] == [32, 64, 128, 256]  # 4 levels: 36 / 8 >= 4
    assert t["batch_size"] == 7  # 5 % of 200 x 36x50x36 voxels over the 40x56x40 patch
    assert t["epochs"] >= 1 and plan.estimate["total_s"] <= 3600
    assert "40x56x40" in plan.reasons["data.spatial_size"]
    _check(plan)


def test_left_right_and_anterior_posterior_classes_are_not_mirrored():
    costs, _ = _cost()
    assert positional_classes(["background", "Anterior", "Posterior"]) == ["Anterior", "Posterior"]
    assert positional_classes(["background", "left_kidney", "Right-Lung", "liver", "tumour"]) == ["left_kidney", "Right-Lung"]
    assert positional_classes(["background", "backbone", "lateral ventricle"]) == ["lateral ventricle"]
    assert positional_classes(["background", "NCR", "ED", "ET"]) == []
    plan = plan_from_fingerprint(_fp(names=("background", "Anterior", "Posterior")), costs, 3600, 8 * 2**30)
    assert plan.config["data"]["augment"]["flip_prob"] == 0.0
    assert "Anterior" in plan.reasons["data.augment.flip_prob"]
    plan = plan_from_fingerprint(_fp(names=("background", "liver", "tumour")), costs, 3600, 8 * 2**30)
    assert plan.config["data"]["augment"]["flip_prob"] == 0.5


def test_anisotropic_ct_is_planned_in_2d_slices_with_the_ct_window():
    costs, _ = _cost()
    fp = _fp(shape=(512, 512, 90), spacing=(0.8, 0.8, 5.0), spacing_range=((0.6, 0.6, 2.5), (0.95, 0.95, 5.0)),
             kinds=("ct",), channel_names=["CT"], n=50)
    plan = plan_from_fingerprint(fp, costs, 4 * 3600, 8 * 2**30)
    d = plan.config["data"]
    assert d["mode"] == "slices" and d["slice_axes"] == [2]
    assert "anisotropic" in plan.reasons["data.mode"]
    assert d["normalization"] == "ct" and d["ct_window"] is None
    assert d["target_spacing"] == [0.8, 0.8, 5.0]
    assert len(d["spatial_size"]) == 2 and max(d["spatial_size"]) <= 512
    _check(plan)


def test_3d_falls_back_to_slices_when_no_useful_patch_fits_the_budget():
    slow, _ = _cost(seconds_per_mvox=10.0)
    fp = _fp(fmt="brats", shape=(240, 240, 155), kinds=("mr",) * 4, names=("background", "NCR", "ED", "ET"), zero=0.8, n=16)
    plan = plan_from_fingerprint(fp, slow, 3600, 8 * 2**30)
    assert plan.config["data"]["mode"] == "slices"
    assert "no useful 3D patch" in plan.reasons["data.mode"]
    assert plan.config["data"]["normalization"] == "zscore" and plan.config["data"]["slices"] == "brain"
    fast, _ = _cost(seconds_per_mvox=0.01)
    plan = plan_from_fingerprint(fp, fast, 3600, 8 * 2**30)
    assert plan.config["data"]["mode"] == "patches" and plan.config["data"]["spatial_size"] == [128, 128, 128]


def test_2d_rgb_photographs_and_mixed_polarity_microscopy():
    costs, _ = _cost()
    rgb = _fp(fmt="drive", dims=2, shape=(584, 565, 1), kinds=("rgb8",) * 3, names=("background", "cell"), n=20,
              known=False, channel_names=["red", "green", "blue"], polarity=0.05, largest=0.95)
    plan = plan_from_fingerprint(rgb, costs, 3600, 8 * 2**30)
    d = plan.config["data"]
    assert d["mode"] == "slices" and d["slices"] == "all" and d["modalities"] == ["red", "green", "blue"]
    assert d["crop"] == "random" and d["tile_inference"] is True  # 584x565 images, a smaller patch
    assert "invert_prob" not in d["augment"]  # one polarity
    _check(plan)
    # DRIVE-like: the red channel is mixed, the green (vessel) channel dark-on-bright: no inversion
    rgb.channels[0].bright_on_dark = 0.35
    assert "invert_prob" not in plan_from_fingerprint(rgb, costs, 3600, 8 * 2**30).config["data"]["augment"]
    cells = _fp(fmt="dsb2018", dims=2, shape=(256, 320, 1), p90=(520, 696, 1), kinds=("grey8",), names=("background", "cell"),
                n=223, known=False, channel_names=["grey"], polarity=0.45, largest=0.1)
    plan = plan_from_fingerprint(cells, costs, 3600, 8 * 2**30)
    d = plan.config["data"]
    assert d["normalization"] == "zscore_all" and d["augment"]["invert_prob"] == 0.5
    assert "45%" in plan.reasons["data.augment.invert_prob"]
    assert d["augment"]["rotate_deg"] == 180.0 and plan.config["postprocess"] == {}
    _check(plan)


def test_slice_stacks_without_spacing_are_planned_in_2d():
    costs, _ = _cost()
    lgg = _fp(fmt="lgg", shape=(256, 256, 22), kinds=("rgb8",) * 3, names=("background", "tumour"), n=12, known=False,
              channel_names=["pre", "flair", "post"])
    plan = plan_from_fingerprint(lgg, costs, 3600, 8 * 2**30)
    assert plan.config["data"]["mode"] == "slices" and "no slice spacing" in plan.reasons["data.mode"]
    assert plan.config["postprocess"] == {"min_component_fraction": 0.1}


def test_memory_and_budget_limits():
    costs, _ = _cost()
    with pytest.raises(ConfigError, match="too short"):
        plan_from_fingerprint(_fp(), costs, 5, 8 * 2**30)
    with pytest.raises(DeviceError, match="cannot fit"):
        plan_from_fingerprint(_fp(dims=2, shape=(256, 256, 1), known=False, kinds=("grey8",), names=("background", "cell")),
                              costs, 3600, 1024)
    # a tighter budget lowers widths or batch before anything else
    costs, _ = _cost(seconds_per_mvox=3.0)
    big = plan_from_fingerprint(_fp(), costs, 3600, 8 * 2**30)
    small = plan_from_fingerprint(_fp(), costs, 600, 8 * 2**30)
    b_big, b_small = big.config["train"]["batch_size"], small.config["train"]["batch_size"]
    w_big = big.config["models"][0]["kwargs"]["features"][0]
    w_small = small.config["models"][0]["kwargs"]["features"][0]
    assert (w_small, b_small) < (w_big, b_big) or b_small < b_big
    assert small.estimate["total_s"] <= 600
    steps = small.estimate["steps_per_epoch"] * small.config["train"]["epochs"]
    assert steps >= MIN_STEPS * 0.5


@pytest.mark.parametrize("text, seconds", [("2h", 7200), ("90m", 5400), ("1h30m", 5400), ("45s", 45), ("600", 600),
                                            ("1.5h", 5400), ("10min", 600)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "-1h", "0", "h"])
def test_parse_duration_refuses(text):
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_instance_data_is_planned_with_flows_and_judged_by_its_objects():
    """Cells counted per image (LIVECell: 155 per 704x520 image, many touching): the plan learns
    flows that separate them, trains the maps, and keeps best.pt by the DSB score; a user's own
    choice of targets stands, and data without objects keep plain classes."""
    costs, _ = _cost()
    cells = _fp(fmt="livecell", dims=2, shape=(520, 704, 1), kinds=("grey8",), names=("background", "cell"), n=14,
                known=False, channel_names=["grey"], polarity=0.14, largest=0.24)
    plain = plan_from_fingerprint(cells, costs, 3600, 8 * 2**30).config
    assert "format_options" not in plain["data"] and plain["train"]["monitor"] == "dice_mean"  # no objects counted
    cells.objects_per_image, cells.object_area_median = 155.0, 704.0
    plan = plan_from_fingerprint(cells, costs, 3600, 8 * 2**30)
    assert plan.config["data"]["format_options"] == {"targets": "flows"}
    assert {"name": "instance_maps", "weight": 1.0} in plan.config["loss"]["terms"]
    assert plan.config["train"]["monitor"] == "dsb_score"
    assert "155 objects per image" in plan.reasons["data.format_options"]
    _check(plan)
    cells.format_options = {"targets": "boundary"}
    assert plan_from_fingerprint(cells, costs, 3600, 8 * 2**30).config["data"]["format_options"] == {"targets": "boundary"}


# --- issue 36: a plan within its budget -------------------------------------------------------

_TOO_SHORT = r"give --time-budget (\S+) or more"


class _SlowDevice:
    """A fake device for :class:`CostModel`: a step of ``seconds(vox, width)`` advances a fake clock
    (no sleeping); counts the steps run."""

    def __init__(self, per_mvox: float = 30.0, floor: float = 0.1):
        self.now, self.steps, self.per_mvox, self.floor = 0.0, 0, per_mvox, floor

    def clock(self) -> float:
        return self.now

    def runner(self, dims, features, patch, batch):
        seconds = self.floor + self.per_mvox * batch * math.prod(patch) / 1e6 * (features[0] / 32) ** 2

        def step():
            self.now += seconds
            self.steps += 1

        return step, lambda: 1e3 * batch * math.prod(patch)


def _model(device: _SlowDevice, budget_s: float):
    from pdeseg.planning.cost import CostModel

    import torch

    return CostModel(torch.device("cpu"), "32", 1, 3, budget_s=budget_s, clock=device.clock, runner=device.runner)


def test_measuring_stops_within_its_budget_and_the_plan_says_what_it_predicted():
    """Steps of 3-6 s (a busy CPU): with a 10 s measuring budget the cost model measures the first
    network's probe at batch 1 (two timed steps: a third would pass the budget), then predicts
    (batch 2 through the origin, other widths scaled from it, candidates from its line), and the
    plan says so; without a budget the same model measures for far longer."""
    from pdeseg.planning.cost import TIMED_STEPS, WARMUP_STEPS

    slow = _SlowDevice()
    cm = _model(slow, 10.0)
    plan = plan_from_fingerprint(_fp(), Costs(cm.predict, cm.cost), 3 * 3600, 8 * 2**30)
    assert cm.spent_s == pytest.approx(slow.now) and cm.spent_s <= 10.0
    assert len(cm.log) == 1 and cm.log[0]["batch"] == 1 and cm.log[0]["timed_steps"] == 2 < TIMED_STEPS
    assert plan.estimate["step_measured"] is False
    assert "predicted, not measured" in plan.reasons["models"] and "predicted, not measured" in plan.summary()
    assert "1 step size measured in 8 s (measuring budget 10 s)" in cm.account() and "predicted" in cm.account()
    _check(plan)
    free = _SlowDevice()
    unbounded = _model(free, math.inf)
    plan_from_fingerprint(_fp(), Costs(unbounded.predict, unbounded.cost), 3 * 3600, 8 * 2**30)
    assert free.now > 3 * slow.now and len(unbounded.log) > len(cm.log)
    assert all(e["timed_steps"] == TIMED_STEPS for e in unbounded.log)
    assert free.steps == (WARMUP_STEPS + TIMED_STEPS) * len(unbounded.log)


def test_a_measuring_budget_shorter_than_one_step_still_measures_the_first_probe_once():
    """Nothing can be predicted without one figure: the first probe gets its warm-up and one timed
    step however slow; nothing else is measured, every other figure is predicted."""
    slow = _SlowDevice(per_mvox=300.0)  # about 27 s a step
    cm = _model(slow, 5.0)
    plan_from_fingerprint(_fp(), Costs(cm.predict, cm.cost), 48 * 3600, 8 * 2**30)
    assert len(cm.log) == 1 and cm.log[0]["timed_steps"] == 1 and slow.steps == 2


def test_measuring_budget_is_a_small_share_of_the_time_budget():
    from pdeseg.planning.cost import measuring_budget

    assert measuring_budget(600) == pytest.approx(30.0)  # 5 % of 10 minutes
    assert measuring_budget(60) == pytest.approx(3.0)
    assert measuring_budget(4 * 3600) == pytest.approx(60.0)  # at most a minute


@pytest.mark.parametrize("fp, budget, what", [
    (_fp(), 5, "too short for a useful training run"),
    (_fp(shape=(512, 512, 512), n=1000), 200, "too short for one epoch"),  # validation alone outlasts the budget
])
def test_a_budget_too_short_names_the_shortest_budget_that_plans(fp, budget, what):
    import re

    costs, _ = _cost(seconds_per_mvox=0.01 if fp.n_cases == 1000 else 0.5)
    with pytest.raises(ConfigError, match=what) as info:
        plan_from_fingerprint(fp, costs, budget, 64 * 2**30)
    message = str(info.value)
    assert "\n" not in message and "the shortest budget" in message
    arg = re.search(_TOO_SHORT, message).group(1)
    shortest = parse_duration(arg)
    assert shortest > budget
    plan = plan_from_fingerprint(fp, costs, shortest, 64 * 2**30)  # given back, it plans
    assert plan.estimate["total_s"] <= shortest
    step = 1.0 if shortest < 120 else 60.0  # and it is the shortest at the resolution it is written in
    with pytest.raises(ConfigError, match=_TOO_SHORT):
        plan_from_fingerprint(fp, costs, shortest - step, 64 * 2**30)


def test_a_busy_cpu_gets_a_smaller_plan_instead_of_a_refusal():
    """Where fewer than MIN_STEPS steps fit, an idle CPU is refused (with the shortest budget), a busy
    one gets a plan of at least about BUSY_MIN_STEPS steps within its budget, with the reason; below
    that floor a busy CPU is refused too, naming its own shortest budget. Where MIN_STEPS fit, the
    busy rule changes nothing."""
    import re

    from pdeseg.planning.planner import BUSY_MIN_STEPS

    costs, _ = _cost(seconds_per_mvox=200.0)
    busy = "load average 6.5 on 2 CPUs"
    with pytest.raises(ConfigError, match=_TOO_SHORT) as idle:
        plan_from_fingerprint(_fp(), costs, 600, 8 * 2**30)
    plan = plan_from_fingerprint(_fp(), costs, 600, 8 * 2**30, busy=busy)
    steps = plan.estimate["steps"]
    assert 0.9 * BUSY_MIN_STEPS <= steps < MIN_STEPS and plan.estimate["total_s"] <= 600
    assert busy in plan.reasons["train.epochs"] and f"fewer than the {MIN_STEPS}" in plan.reasons["train.epochs"]
    _check(plan)
    with pytest.raises(ConfigError, match=_TOO_SHORT) as refused:
        plan_from_fingerprint(_fp(), costs, 60, 8 * 2**30, busy=busy)
    busy_shortest = parse_duration(re.search(_TOO_SHORT, str(refused.value)).group(1))
    assert busy_shortest < parse_duration(re.search(_TOO_SHORT, str(idle.value)).group(1))
    assert plan_from_fingerprint(_fp(), costs, busy_shortest, 8 * 2**30, busy=busy).estimate["steps"] < MIN_STEPS
    fast, _ = _cost()
    same = [plan_from_fingerprint(_fp(), fast, 3600, 8 * 2**30, busy=b).config for b in ("", busy)]
    assert same[0] == same[1]
