"""What a trained PDE layer does: stencil/moment figures, feature figures, the JSON summary,
``pdeseg inspect`` and the PDE3D-UNet figures of ``pdeseg compare``."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from pdeseg.config import TaskSpec
from pdeseg.nn.pde3d_unet import PDE3DUNet
from pdeseg.nn.unet3d import UNet3D
from pdeseg.viz import pde_effect
from pdeseg.viz.pde_effect import (
    channel_change,
    derivative_name,
    layer_input,
    moment_panel,
    most_changed_channels,
    pde_layer_summary,
    pde_layers,
    plot_pde_features,
    plot_pde_kernels,
)

PNG = b"\x89PNG\r\n\x1a\n"
MODALITIES = ["flair", "t1", "t1ce", "t2"]
CLASSES = ["background", "NCR", "ED", "ET"]


def _trained(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every PDE layer's free moments and coefficients non-trivial values, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in pde_layers(model).values():
            layer.stencils.m_free.copy_(0.05 * torch.randn(layer.stencils.m_free.shape, generator=g))
            layer.coefficients.r_strength.add_(torch.randn(layer.coefficients.r_strength.shape, generator=g))
    return model.eval()


def _model3d(**kw) -> PDE3DUNet:
    return _trained(PDE3DUNet(3, 1, 2, features=(4, 8, 16), **kw))


def _model2d(**kw) -> PDE3DUNet:
    return _trained(PDE3DUNet(2, 1, 2, features=(4, 8, 16), **kw))


def _png(path) -> None:
    assert path.is_file() and path.read_bytes()[:8] == PNG and path.stat().st_size > 5_000, path


def _numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield obj


# --- helpers -----------------------------------------------------------------------------


def test_derivative_names_follow_the_multi_index():
    assert [derivative_name(a) for a in [(2, 0, 0), (0, 1), (1, 0, 1), (0, 0, 1), (1, 1)]] == ["d_xx", "d_y", "d_xz", "d_z", "d_xy"]


def test_pde_layers_finds_the_module_dict_and_nothing_else():
    model = PDE3DUNet(3, 1, 2, features=(4, 8, 16), pde_positions=(0, "bottleneck"))
    assert set(pde_layers(model)) == {"0", "bottleneck"}
    assert pde_layers(UNet3D(3, 1, 2, features=(4, 8, 16))) == {}
    from pdeseg.nn.pde_unet import PDEUNet

    cable = PDEUNet(in_channels=4, out_channels=4, features=[4, 8, 8, 8, 8])
    assert pde_layers(cable) == {} and pde_effect.cable_block(cable) is cable.pde


@pytest.mark.parametrize("dims, size, operator", [(3, 3, "general"), (2, 5, "anisotropic"), (2, 3, "general")])
def test_moment_panel_marks_exactly_the_fixed_entries(dims, size, operator):
    """The entries drawn as fixed are those the constraint fixes: |b| <= |alpha| + r - 1 in the
    shown slice; they hold their fixed values (1 at alpha), the others the trained moments."""
    model = (_model3d if dims == 3 else _model2d)(pde_kernel_size=size, pde_operator=operator, pde_order=2)
    bank = model.pde["bottleneck"].stencils
    for t, alpha in enumerate(bank.derivatives):
        panel = moment_panel(bank, t)
        limit = sum(alpha) + bank.order - 1
        involved = [i for i, a in enumerate(alpha) if a]
        # the slice holds alpha and the axes alpha differentiates along
        assert panel.values[panel.alpha] == 1.0 and panel.fixed[panel.alpha]
        assert all(("xyz"[i] in (panel.rows, panel.cols)) for i in involved)
        expected = np.array([[i + j <= limit for j in range(size)] for i in range(size)])
        np.testing.assert_array_equal(panel.fixed, expected)
        fixed_values = panel.values[panel.fixed]
        assert set(np.unique(fixed_values)) <= {0.0, 1.0} and (fixed_values == 1.0).sum() == 1
        # free entries show the trained moments (which are non-zero here)
        free = panel.values[~panel.fixed]
        assert free.size and np.abs(free).max() > 0
    # in 3D the slice of d_xz is the x-z plane at b_y = 0; of d_yy the x-y plane
    if dims == 3:
        names = [derivative_name(a) for a in bank.derivatives]
        p = moment_panel(bank, names.index("d_xz"))
        assert (p.rows, p.cols, p.title) == ("x", "z", "M[b_x, b_y=0, b_z]")
        p = moment_panel(bank, names.index("d_yy"))
        assert (p.rows, p.cols, p.alpha) == ("x", "y", (0, 2))
    with pytest.raises(IndexError):
        moment_panel(bank, len(bank.derivatives))


def test_most_changed_channels_and_change_norms():
    rng = np.random.default_rng(0)
    before = rng.normal(size=(6, 8, 7, 5)).astype(np.float32)
    scales = [0.1, 2.0, 0.0, 0.5, 3.0, 1.0]
    after = before + np.stack([s * rng.normal(size=(8, 7, 5)) for s in scales]).astype(np.float32)
    change = channel_change(before, torch.from_numpy(after))
    np.testing.assert_allclose(change, np.sqrt(((after - before).astype(np.float64) ** 2).sum(axis=(1, 2, 3))), rtol=1e-6)
    assert most_changed_channels(before, after, 3) == [4, 1, 5]
    assert most_changed_channels(before, after, 10) == [4, 1, 5, 3, 0, 2]
    with pytest.raises(ValueError, match="one shape"):
        channel_change(before, after[:, :4])


def test_features_figure_shows_the_most_changed_channels(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    before = rng.normal(size=(5, 12, 10, 6)).astype(np.float32)
    after = before.copy()
    after[3] += 2.0 * rng.normal(size=(12, 10, 6))
    after[0] += 0.5 * rng.normal(size=(12, 10, 6))
    figs = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (figs.append(fig), save(fig, *a, **k))[1])
    path = plot_pde_features(before, after, tmp_path / "f3d.png", channels=2)
    _png(path)
    titles = [ax.get_title() for ax in figs[0].axes if ax.get_title()]
    assert titles == [f"channel {c}: {w}" for c in (3, 0) for w in ("before", "after", "after - before")]
    # before and after share one colour scale per channel, the difference is centred at 0
    images = [ax.images[0] for ax in figs[0].axes if ax.images]
    assert images[0].get_clim() == images[1].get_clim()
    lo, hi = images[2].get_clim()
    assert lo == -hi and hi > 0
    _png(plot_pde_features(torch.from_numpy(before[..., 0]), torch.from_numpy(after[..., 0]), tmp_path / "f2d.png", rotate=False))


# --- figures and summary on tiny models ---------------------------------------------------


@pytest.mark.parametrize("make, shape", [(_model3d, (1, 1, 16, 12, 8)), (_model2d, (1, 1, 16, 12))])
def test_kernel_and_feature_figures_of_every_layer(tmp_path, make, shape):
    model = make(pde_positions=(0, "bottleneck"), pde_operator="general")
    for position, layer in pde_layers(model).items():
        _png(plot_pde_kernels(layer, tmp_path / f"k_{position}.png", title=f"tiny {position}"))
    feats = model.features_around(torch.randn(shape, generator=torch.Generator().manual_seed(0)))
    assert set(feats) == {"0", "bottleneck"}
    for position, (before, after) in feats.items():
        assert before.shape == after.shape and not torch.equal(before, after)
        _png(plot_pde_features(before[0], after[0], tmp_path / f"f_{position}.png", channels=3))


@pytest.mark.parametrize("make", [_model3d, _model2d])
def test_summary_has_every_position_and_finite_numbers(make):
    model = make(pde_positions=(0, 1, "bottleneck"), pde_operator="general")
    summary = pde_layer_summary(model)
    assert set(summary) == {"0", "1", "bottleneck"}
    text = json.dumps(summary, allow_nan=False)  # JSON-able, no NaN or infinity
    assert all(math.isfinite(v) for v in _numbers(json.loads(text)))
    d = model.spatial_dims
    for position, entry in summary.items():
        layer = model.pde[position]
        assert entry["lambda_mean"] == pytest.approx(float(layer.coefficients.strength().mean().detach()))
        assert len(entry["k_mean_per_axis"]) == d and entry["channels"] == layer.channels
        assert [k["derivative"] for k in entry["kernels"]] == [derivative_name(a) for a in layer.stencils.derivatives]
        for t, k in enumerate(entry["kernels"]):
            m = np.array(k["moments"])  # (groups, n, ..., n)
            assert m.shape == (1,) + (3,) * d
            assert m[(0, *k["alpha"])] == 1.0
            assert 0 < k["free_moment_rms"] <= k["free_moment_abs_max"]
            np.testing.assert_allclose(m[0], layer.stencils.moments()[0, t].detach().numpy())
    with pytest.raises(ValueError, match="no PDE layers"):
        pde_layer_summary(UNet3D(3, 1, 2, features=(4, 8, 16)))


def test_layer_input_follows_the_sampling_mode():
    image = np.arange(2 * 20 * 18 * 10, dtype=np.float32).reshape(2, 20, 18, 10)

    def spec(mode, size=None, resize=False):
        return TaskSpec(format="brats", modalities=["t1", "t2"], normalization="zscore", mode=mode,
                        spatial_dims=2 if mode == "slices" else 3, spatial_size=size, resize=resize, num_classes=2,
                        class_names=["background", "tumour"])

    x = layer_input(image, spec("patches", [8, 8, 8]), centre=[18, 2, 5])
    assert x.shape == (1, 2, 8, 8, 8)
    np.testing.assert_array_equal(x[0].numpy(), image[:, 12:20, 0:8, 1:9])  # shifted inside the volume
    assert layer_input(image, spec("whole")).shape == (1, 2, 20, 18, 10)
    x = layer_input(image, spec("slices"), centre=[0, 0, 7])
    np.testing.assert_array_equal(x[0].numpy(), image[..., 7])
    assert layer_input(image, spec("slices", [16, 16], resize=True)).shape == (1, 2, 16, 16)


# --- pdeseg inspect ------------------------------------------------------------------------


def _checkpoint(path, name: str, kwargs: dict, mode: str = "patches", dims: int = 3, size=(16, 16, 8)):
    from pdeseg.checkpoint import plain_state_dict, save_checkpoint
    from pdeseg.nn.models import build_model

    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    _trained(model)
    spec = TaskSpec(format="brats", modalities=MODALITIES, normalization="zscore", mode=mode, spatial_dims=dims,
                    spatial_size=list(size), num_classes=4, class_names=CLASSES,
                    regions={"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]})
    save_checkpoint({"model": {"name": name, "kwargs": kwargs}, "preprocessing": spec.model_dump(mode="json"),
                     "state_dict": plain_state_dict(model), "training": {"epoch": 3}}, path)
    return model


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    from pdeseg.data.phantoms.brats import write_phantom_dataset

    root = tmp_path_factory.mktemp("inspect_cases")
    write_phantom_dataset(root, n_cases=2, seed=1, shape=(20, 18, 16))
    return root


def test_cli_inspect_writes_kernels_summary_and_features(tmp_path, cases, capsys):
    from pdeseg.cli import main

    kwargs = {"spatial_dims": 3, "in_channels": 4, "out_channels": 4, "features": [4, 8, 16],
              "pde_positions": [0, "bottleneck"]}
    model = _checkpoint(tmp_path / "best.pt", "pde3d_unet", kwargs)
    out = tmp_path / "inspect"
    assert main(["inspect", "--checkpoint", str(tmp_path / "best.pt"), "--out", str(out), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["pde_kernels_0.png", "pde_kernels_bottleneck.png", "pde_layers.json"]
    summary = json.loads((out / "pde_layers.json").read_text())
    assert summary["model"] == "pde3d_unet" and summary["epoch"] == 3 and set(summary["layers"]) == {"0", "bottleneck"}
    assert summary["layers"]["0"]["lambda_mean"] == pytest.approx(float(model.pde["0"].coefficients.strength().mean().detach()))
    ids = sorted(p.name for p in cases.iterdir() if p.is_dir())
    assert main(["inspect", "--checkpoint", str(tmp_path / "best.pt"), "--input", str(cases), "--case", ids[1],
                 "--out", str(out), "--device", "cpu", "--channels", "2"]) == 0
    for name in ("pde_kernels_0.png", "pde_kernels_bottleneck.png", "pde_features_0.png", "pde_features_bottleneck.png"):
        _png(out / name)
    assert "wrote 5 file(s)" in capsys.readouterr().out


def test_cli_inspect_2d_slice_model_and_cable_block(tmp_path, cases):
    from pdeseg.cli import main

    kwargs = {"spatial_dims": 2, "in_channels": 4, "out_channels": 4, "features": [4, 8, 16]}
    _checkpoint(tmp_path / "m2.pt", "pde3d_unet", kwargs, mode="slices", dims=2, size=(20, 18))
    assert main(["inspect", "--checkpoint", str(tmp_path / "m2.pt"), "--input", str(cases), "--out", str(tmp_path / "a"),
                 "--device", "cpu"]) == 0
    _png(tmp_path / "a" / "pde_features_bottleneck.png")
    kwargs = {"in_channels": 4, "out_channels": 4, "features": [4, 8, 8, 8, 8]}
    _checkpoint(tmp_path / "cable.pt", "pde_unet", kwargs, mode="slices", dims=2, size=(20, 18))
    assert main(["inspect", "--checkpoint", str(tmp_path / "cable.pt"), "--input", str(cases), "--out", str(tmp_path / "b"),
                 "--device", "cpu"]) == 0
    coeffs = json.loads((tmp_path / "b" / "cable_coefficients.json").read_text())
    assert coeffs["modalities"] == MODALITIES and len(coeffs["coefficients"]["phi"]) == 4
    _png(tmp_path / "b" / "cable_effect.png")


def test_cli_inspect_errors_are_one_line_with_exit_code_2(tmp_path, cases, caplog):
    from pdeseg.cli import main

    kwargs = {"spatial_dims": 3, "in_channels": 4, "out_channels": 4, "features": [4, 8, 16]}
    _checkpoint(tmp_path / "pde.pt", "pde3d_unet", kwargs)
    _checkpoint(tmp_path / "plain.pt", "unet3d", kwargs)
    out = tmp_path / "out"
    for argv, message in (
        (["--checkpoint", str(tmp_path / "plain.pt")], "has no PDE layers"),
        (["--checkpoint", str(tmp_path / "missing.pt")], "checkpoint not found"),
        (["--checkpoint", str(tmp_path / "pde.pt"), "--input", str(tmp_path / "nowhere")], "not found"),
        (["--checkpoint", str(tmp_path / "pde.pt"), "--input", str(cases), "--case", "nobody"], "--case nobody"),
    ):
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="pdeseg"):
            assert main(["inspect", *argv, "--out", str(out), "--device", "cpu"]) == 2, argv
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and message in errors[0] and "\n" not in errors[0], errors
        assert not out.exists()  # nothing written before the inputs were checked
    (tmp_path / "file").write_text("x")
    assert main(["inspect", "--checkpoint", str(tmp_path / "pde.pt"), "--out", str(tmp_path / "file" / "sub"),
                 "--device", "cpu"]) == 2


# --- pdeseg compare ------------------------------------------------------------------------


def test_compare_shows_the_pde_layers_of_a_pde3d_unet(phantom_root, tmp_path):
    from conftest import tiny_config_dict
    from pdeseg.config import config_from_dict
    from pdeseg.experiments.compare import run_compare
    from pdeseg.viz.report import referenced_files

    d = tiny_config_dict(phantom_root, tmp_path / "runs", epochs=1)
    d["data"].update({"mode": "patches", "spatial_size": [16, 16, 16], "samples_per_case": 1})
    d["models"] = [{"name": "pde3d_unet", "kwargs": {"features": [4, 8, 16], "pde_positions": [0, "bottleneck"]}}]
    out = tmp_path / "cmp"
    run_compare(config_from_dict(d), out, seeds=[0, 1], progress=False)
    summary = json.loads((out / "pde_layers.json").read_text())
    assert set(summary) == {"pde3d_unet"} and set(summary["pde3d_unet"]) == {"0", "1"}
    assert all(set(s) == {"0", "bottleneck"} for s in summary["pde3d_unet"].values())
    refs = {p.name for p in referenced_files(out / "report.html")}
    for position in ("0", "bottleneck"):
        assert {f"pde_kernels_pde3d_unet_{position}.png", f"pde_features_pde3d_unet_{position}.png"} <= refs
        _png(out / "figures" / f"pde_features_pde3d_unet_{position}.png")
    assert not (out / "figures" / "cable_effect.png").exists()
