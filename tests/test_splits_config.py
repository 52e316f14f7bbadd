from pathlib import Path

import pytest

from pdeseg.build import resolve
from pdeseg.config import load_config
from pdeseg.errors import ConfigError
from pdeseg.data.pipeline.splits import split_cases

IDS = [f"case_{i:03d}" for i in range(20)]


def test_split_is_deterministic_and_patient_disjoint():
    a = split_cases(IDS, fractions=[0.8, 0.1, 0.1], seed=7)
    b = split_cases(list(reversed(IDS)), fractions=[0.8, 0.1, 0.1], seed=7)
    assert a == b
    assert [len(a[k]) for k in ("train", "val", "test")] == [16, 2, 2]
    parts = [set(a[k]) for k in ("train", "val", "test")]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert set().union(*parts) == set(IDS)
    assert split_cases(IDS, fractions=[0.8, 0.1, 0.1], seed=8) != a


def test_small_sets_keep_one_val_and_one_test_case():
    s = split_cases(IDS[:5], fractions=[0.8, 0.1, 0.1])
    assert [len(s[k]) for k in ("train", "val", "test")] == [3, 1, 1]


def test_counts_exact_and_scaled():
    s = split_cases(IDS, counts=[14, 4, 2])
    assert [len(s[k]) for k in ("train", "val", "test")] == [14, 4, 2]
    scaled = split_cases(IDS[:16], counts=[250, 74, 45])  # paper 003's split on 16 cases
    assert [len(scaled[k]) for k in ("train", "val", "test")] == [11, 3, 2]
    with pytest.raises(ValueError, match="sum to"):
        split_cases(IDS, counts=[250, 74, 45], scale_counts=False)


def test_duplicate_ids_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        split_cases(["a", "a", "b"], fractions=[0.8, 0.1, 0.1])


def test_config_overrides_and_validation(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ntrain:\n  epochs: 3\ndata:\n  slices: middle\n")
    cfg = load_config(path, ["train.batch_size=2", "data.spatial_size=[128, 128]"])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.data.slices, cfg.data.spatial_size) == (3, 2, "middle", [128, 128])
    with pytest.raises(ConfigError, match="unknown key train.epoch "):
        load_config(path, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="data.slices = 'some'.*'middle'"):
        load_config(path, ["data.slices=some"])
    with pytest.raises(ConfigError, match="train.epochs = 'many'.*integer"):
        load_config(path, ["train.epochs=many"])
    with pytest.raises(ConfigError, match="models\\[0\\].*nope"):
        resolve(load_config(path, ["models=[{name: nope}]"]))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", ["pde_unet_brats2020.yaml", "pde_unet_brats_realistic.yaml"])
def test_shipped_configs_load(name):
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / name)
    assert {m.name for m in cfg.models} == {"unet", "pde_unet"}


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_builds_its_models(path, tmp_path):
    """MSD configs read their classes from a task's dataset.json: a phantom task of the
    config's kind (CT for a CT normalisation, else MRI) stands in for the real one. Named
    ablation variants must build too."""
    from pdeseg.build import build_network
    from pdeseg.config import load_config
    from pdeseg.data.phantoms.msd import write_msd_phantom_dataset

    cfg = load_config(path)
    if cfg.data.format == "msd":
        kind = "ct" if cfg.data.normalization == "ct" else "mri"
        cfg = load_config(path, [f"data.root={write_msd_phantom_dataset(tmp_path, 1, kind=kind, n_test=0)}"])
    exp = resolve(cfg)
    for m in exp.cfg.models:
        build_network(exp, m)
    if cfg.ablation is not None:  # every named variant of an ablation plan resolves and builds
        from pdeseg.experiments.ablate import config_variants, variant_config

        for variant in config_variants(cfg):
            variant_config(cfg, cfg.models[0].name, variant)


def test_paper_003_config_protocol():
    from pdeseg.config import load_config
    from pdeseg.data.pipeline.splits import split_cases

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "unet_casestudy_brats2020.yaml")
    d = cfg.data
    assert d.modalities == ["flair", "t1ce"] and d.slices == "range" and d.slice_range == [5, 150]
    assert d.spatial_size == [128, 128] and d.resize and [t.name for t in cfg.loss.terms] == ["ce"] and cfg.num_classes == 4
    full = split_cases([f"c{i:03d}" for i in range(369)], None, d.split.counts, 0, True)
    assert [len(full[k]) for k in ("train", "val", "test")] == [250, 74, 45]
    small = split_cases([f"c{i:03d}" for i in range(16)], None, d.split.counts, 0, True)
    assert [len(small[k]) for k in ("train", "val", "test")] == [11, 3, 2]


def test_format_config_errors_are_clear():
    from pdeseg.config import config_from_dict
    from pdeseg.errors import ConfigError

    check = lambda d: resolve(config_from_dict(d))  # noqa: E731
    with pytest.raises(ConfigError, match="data.format"):
        check({"data": {"format": "nifti-folder"}})
    with pytest.raises(ConfigError, match="2 classes"):
        check({"num_classes": 4, "data": {"format": "lgg", "modalities": ["flair"]}})
    with pytest.raises(ConfigError, match="not lgg channels"):
        check({"num_classes": 2, "data": {"format": "lgg", "modalities": ["t1"]}})
    with pytest.raises(ConfigError, match="sigmoid"):
        check({"output": "sigmoid"})
    assert check({"data": {"format": "lgg"}}).spec.num_classes == 2  # classes come from the data set
