"""The study core under compare, ablate, robustness and crossval: every runner, interrupted
after its first run (in training, then in scoring), continues on a rerun without training a
finished run again and without scoring again what it has kept."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_config_dict
from pdeseg.config import config_from_dict
from pdeseg.errors import RunFolderError
from pdeseg.experiments import study as study_module


def _cfg(phantom_root, tmp_path):
    cfg = tiny_config_dict(phantom_root, tmp_path, epochs=1)
    cfg["data"]["split"] = {"fractions": [0.5, 0.17, 0.33], "seed": 0}
    return cfg


def _runners(phantom_root, tmp_path):
    """name -> (call running the study into a folder, the folder)."""
    from pdeseg.experiments.ablate import run_ablation
    from pdeseg.experiments.compare import run_compare
    from pdeseg.experiments.crossval import run_crossval
    from pdeseg.experiments.robustness import run_robustness

    cfg = config_from_dict(_cfg(phantom_root, tmp_path))
    one = _cfg(phantom_root, tmp_path)
    one["models"] = one["models"][:1]
    one["data"]["split"] = {"fractions": [0.7, 0.15, 0.15], "seed": 0}
    cv = config_from_dict(one)
    return {
        "compare": lambda out: run_compare(cfg, out, [0], scope="volume", progress=False),
        "ablate": lambda out: run_ablation(cfg, out, ["dropout=0,0.1"], [0], progress=False),
        "robustness": lambda out: run_robustness(cfg, out, [0], study="noise", kinds=["gaussian"], levels=[0, 0.1],
                                                 progress=False),
        "crossval": lambda out: run_crossval(cv, cv.models[0], out, 2, progress=False),
    }


def _kept_keys(out):
    return [json.loads(line)["key"] for line in (out / "scores.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("runner", ["compare", "ablate", "robustness", "crossval"])
def test_an_interrupted_study_continues_without_training_or_scoring_again(runner, phantom_root, tmp_path, monkeypatch):
    run = _runners(phantom_root, tmp_path)[runner]
    out = tmp_path / runner
    trained: list = []
    real_train = study_module.train_or_resume

    def stop_at_second_run(cfg, model_cfg, run_dir, *args, **kwargs):
        trained.append(run_dir)
        if len(trained) == 2:
            raise KeyboardInterrupt  # the user stops the study after its first run
        return real_train(cfg, model_cfg, run_dir, *args, **kwargs)

    monkeypatch.setattr(study_module, "train_or_resume", stop_at_second_run)
    with pytest.raises(KeyboardInterrupt):
        run(out)
    first = trained[0]
    assert (first / "last.pt").is_file() and not (out / "scores.jsonl").exists()
    stamp = (first / "last.pt").stat().st_mtime_ns

    # rerun, stopped again in the scoring, once the first score was kept
    monkeypatch.setattr(study_module, "train_or_resume", real_train)
    real_put, puts = study_module.ScoreStore.put, []

    def stop_after_first_scores(self, key, row):
        real_put(self, key, row)
        puts.append(key)
        raise KeyboardInterrupt

    monkeypatch.setattr(study_module.ScoreStore, "put", stop_after_first_scores)
    with pytest.raises(KeyboardInterrupt):
        run(out)
    assert (first / "last.pt").stat().st_mtime_ns == stamp  # the finished run was not trained again
    kept = _kept_keys(out)
    assert kept and kept == puts

    # and to the end: nothing kept is scored again, nothing finished is trained again
    monkeypatch.setattr(study_module.ScoreStore, "put", real_put)
    calls: list = []
    from pdeseg.training import run as run_module

    real_model = run_module.train_model
    monkeypatch.setattr(run_module, "train_model", lambda cfg, m, run_dir, *a, **k: calls.append(run_dir) or real_model(cfg, m, run_dir, *a, **k))
    result = run(out)
    assert first not in calls and (first / "last.pt").stat().st_mtime_ns == stamp
    every = _kept_keys(out)
    assert every[:len(kept)] == kept and len(set(every)) == len(every)  # each score computed once, ever
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("**/last.pt")}
    size = len(every)
    again = run(out)  # a finished study: nothing trained, nothing scored
    assert {p: p.stat().st_mtime_ns for p in out.glob("**/last.pt")} == stamps and len(_kept_keys(out)) == size
    assert _table(runner, again) == _table(runner, result)


def _table(runner, result) -> str:
    """The runner's table as text (NaN spreads of one seed compare equal as text)."""
    if runner == "crossval":
        rows = result.rows
    elif runner == "robustness":
        rows = [(r["model"], r["level"], r["dice_mean"]["mean"]) for r in result.noise_table]
    else:
        rows = [{k: v for k, v in r.items() if not k.endswith("time_s") and k != "test_ms_per_unit"} for r in result.table]
    return json.dumps(rows, sort_keys=True, default=str)


def test_a_folder_of_another_study_is_refused(phantom_root, tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    (out / "study.json").write_text(json.dumps({"kind": "ablate", "layout": 2}))
    with pytest.raises(RunFolderError, match="holds a ablate study, not a compare study"):
        _runners(phantom_root, tmp_path)["compare"](out)


def test_a_study_folder_of_0_1_0_keeps_its_runs_and_is_scored_again(phantom_root, tmp_path, caplog):
    """A folder without study.json (pdeseg 0.1.0) is taken over: its trained runs are reused,
    its scores computed once more into scores.jsonl, with a warning that says so."""
    out = tmp_path / "old"
    run = _runners(phantom_root, tmp_path)["compare"]
    first = run(out)
    (out / "study.json").unlink()
    (out / "scores.jsonl").unlink()
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/**/last.pt")}
    again = run(out)
    assert "a study folder of pdeseg 0.1.0" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/**/last.pt")} == stamps  # nothing trained again
    assert (out / "scores.jsonl").is_file() and json.loads((out / "study.json").read_text())["kind"] == "compare"
    assert _table("compare", again) == _table("compare", first)
