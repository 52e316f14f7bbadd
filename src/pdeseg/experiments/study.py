"""The study core under ``compare``, ``ablate``, ``robustness`` and ``crossval``.

A *study* is a folder of many trainings on one data set, scored case by case and compared
with paired tests. What every study shares lives here, once:

* :meth:`Study.open` resolves the config, prepares the data (split and cache) and checks the
  runner's own conditions *before* anything is written; then writes ``config.yaml``,
  ``environment.json``, ``split.json`` and ``study.json`` (which runner, which pdeseg);
* :meth:`Study.train` trains every :class:`Run` (a condition and a seed) through
  :mod:`pdeseg.training`, continuing interrupted runs and reusing finished ones, and draws each
  run's ``curves.png``;
* :meth:`Study.scores` scores a run's best checkpoint on cases through the one scoring path
  (:mod:`pdeseg.inference.score`), keeping every per-case row in ``scores.jsonl``
  (:class:`ScoreStore`), so that rerunning an interrupted study neither retrains nor re-scores
  what it has.

What is left to a runner is what is its own: which conditions to run, and which tables to
print (:mod:`pdeseg.experiments.tables`, figures in :mod:`pdeseg.viz`).

Study folders written by pdeseg 0.1.0 have no ``study.json``: their trained runs are reused as
they are, and their scores (kept then in per-runner files) are computed once more into
``scores.jsonl``; a folder made by another runner is refused.
"""

from __future__ import annotations

import copy
import json
import logging
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pdeseg import __version__
from pdeseg.build import Experiment, resolve
from pdeseg.config import ExperimentConfig, ModelConfig, save_config
from pdeseg.data.pipeline.cache import CachedCase
from pdeseg.data.files import make_folders
from pdeseg.data.pipeline.prepare import PreparedData, prepare_data
from pdeseg.data.pipeline.splits import save_split
from pdeseg.errors import RunFolderError
from pdeseg.inference.options import InferenceOptions
from pdeseg.inference.predict import Predictor
from pdeseg.inference.score import Scores
from pdeseg.training.run import train_or_resume

log = logging.getLogger(__name__)

STUDY_FILE = "study.json"
SCORES_FILE = "scores.jsonl"
#: Version of the study folder's layout (``study.json``, ``scores.jsonl``); 0.1.0 folders had none.
LAYOUT = 2
#: Loaded checkpoints a study keeps at once (:meth:`Study.predictor`).
KEPT_PREDICTORS = 16


def environment() -> dict[str, Any]:
    """Versions and device, saved with every study."""
    import monai

    return {
        "pdeseg": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "monai": monai.__version__, "numpy": np.__version__, "platform": platform.platform(),
        "processor": platform.processor(), "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


@dataclass
class Run:
    """One training run of a study.

    Attributes:
        condition: what the run stands for in the tables (a model, a variant, a fold).
        seed: its training seed (set in ``exp.cfg.train.seed``).
        run_dir: its run folder (resumable).
        exp: its resolved experiment (config with the seed and the condition's settings).
        model_cfg: the registered model it trains.
        data: its prepared data (a subsampled training side for a label-fraction run).
        fields: extra columns of its score rows (``fraction``, ``n_train``, ``fold``, ...).
        last: its ``last.pt`` once trained (history, best epoch, parameters).
    """

    condition: str
    seed: int
    run_dir: Path
    exp: Experiment
    model_cfg: ModelConfig
    data: PreparedData
    fields: dict[str, Any] = field(default_factory=dict)
    last: dict[str, Any] | None = None

    @property
    def best(self) -> Path:
        return self.run_dir / "best.pt"

    @property
    def best_epoch(self) -> int:
        return int(self.last["training"]["best_epoch"])

    @property
    def parameters(self) -> int:
        return int(self.last["parameters"])

    @property
    def train_time_s(self) -> float:
        return float(sum(r["train_time_s"] for r in self.last["training"]["history"]))

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.last["training"]["history"]


class ScoreStore:
    """Score rows already computed, one JSON object a line in ``scores.jsonl``.

    A key names the checkpoint by path (relative to the study folder), size and modification
    time, so that a run trained again is scored again, and what was scored (split or
    condition, case). Lines cut short by an interruption are ignored; a later line for the same
    key wins.
    """

    def __init__(self, path: Path):
        self.path, self.root = path, path.parent
        self.rows: dict[str, dict] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    item = json.loads(line)
                    self.rows[item["key"]] = item["row"]
                except (ValueError, KeyError, TypeError):
                    continue

    def key(self, checkpoint: Path | str, *parts: Any) -> str:
        """The key of ``parts`` scored by ``checkpoint`` (a path, or its :meth:`identity`)."""
        return "|".join(map(str, (checkpoint if isinstance(checkpoint, str) else self.identity(checkpoint), *parts)))

    def identity(self, checkpoint: Path) -> str:
        """``path|size|mtime`` of a checkpoint (path relative to the study folder): read once
        per scoring call, not once per case."""
        st = checkpoint.stat()
        try:
            name = checkpoint.resolve().relative_to(self.root.resolve())
        except ValueError:
            name = checkpoint.resolve()
        return f"{name}|{st.st_size}|{st.st_mtime_ns}"

    def get(self, key: str) -> dict | None:
        return self.rows.get(key)

    def put(self, key: str, row: dict) -> None:
        self.rows[key] = row
        with self.path.open("a") as fh:
            fh.write(json.dumps({"key": key, "row": row}, default=_plain) + "\n")


def _plain(value: Any) -> Any:
    """NumPy scalars as Python numbers for JSON."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class Study:
    """An open study folder (see the module docstring); made by :meth:`open`.

    Attributes:
        out: the study folder.
        exp: the resolved base experiment.
        data: the prepared data (its split is the study's).
        kind: which runner made it (``compare``, ``ablate``, ``robustness``, ``crossval``).
        store: the per-case score rows kept so far.
    """

    def __init__(self, out: Path, exp: Experiment, data: PreparedData, kind: str, progress: bool = True):
        self.out, self.exp, self.data, self.kind, self.progress = out, exp, data, kind, progress
        self.store = ScoreStore(out / SCORES_FILE)
        self._predictors: dict[tuple[Path, InferenceOptions], Predictor] = {}

    @property
    def cfg(self) -> ExperimentConfig:
        return self.exp.cfg

    @classmethod
    def open(cls, cfg: ExperimentConfig | Experiment, out_dir: str | Path, kind: str, *, progress: bool = True,
             check: Callable[[PreparedData], None] | None = None, data: PreparedData | None = None,
             write_split: bool = True, extra: dict[str, Any] | None = None) -> Study:
        """Resolve, prepare and check, then create the folder and write what was run on what.

        Args:
            cfg: the base experiment (resolved here unless already resolved).
            out_dir: the study folder (created; an existing study of the same runner continues).
            kind: the runner's name, kept in ``study.json``.
            check: the runner's checks of the prepared data (raise ConfigError); run before
                anything is written, so a refused study leaves no folder.
            data: prepared data to use (default: prepared from the config, reusing the
                folder's ``split.json``).
            write_split: write ``split.json`` (crossval keeps ``folds.json`` instead).
            extra: more of what defines the study (the grid, the folds' settings), kept in
                ``study.json``.

        Raises:
            ConfigError: a config value the data or registries reject, or ``check``'s refusal.
            RunFolderError: the folder is a study of another runner, or cannot be created.
            DataError: bad data.
        """
        exp = cfg if isinstance(cfg, Experiment) else resolve(cfg)
        out = Path(out_dir)
        _check_kind(out, kind)
        if data is None:
            data = prepare_data(exp.cfg.data, exp.spec, out / "split.json" if write_split else None, progress=progress)
        if check is not None:
            check(data)
        make_folders(out, f"{kind} folder")
        save_config(exp.cfg, out / "config.yaml")
        (out / "environment.json").write_text(json.dumps(environment(), indent=1))
        if write_split:
            save_split(data.split, out / "split.json")
        (out / STUDY_FILE).write_text(json.dumps({"kind": kind, "layout": LAYOUT, "pdeseg": __version__,
                                                  **(extra or {})}, indent=1))
        return cls(out, exp, data, kind, progress)

    def run(self, condition: str, seed: int, run_dir: Path, exp: Experiment | None = None,
            model_cfg: ModelConfig | None = None, data: PreparedData | None = None, **fields: Any) -> Run:
        """A :class:`Run` of ``condition`` with ``seed`` in ``run_dir`` (relative to the study
        folder): ``exp`` (default the study's) with its seed set, ``model_cfg`` (default the
        config's first model) and ``data`` (default the study's)."""
        base = exp or self.exp
        run_cfg = copy.deepcopy(base.cfg)
        run_cfg.train.seed = seed
        if "train_cases" in fields:
            run_cfg.data.train_cases = fields.pop("train_cases")
        return Run(condition, seed, self.out / run_dir, Experiment(run_cfg, base.fmt, base.info, base.spec),
                   model_cfg or run_cfg.models[0], data or self.data, fields)

    def train(self, runs: Sequence[Run], title: Callable[[Run], str] | None = None) -> None:
        """Train every run in order (a finished run is reused, an interrupted one resumed from
        its ``last.pt``), filling each run's ``last``, and draw its ``curves.png``."""
        for i, run in enumerate(runs):
            log.info("run %d/%d: %s, seed %d (%s)", i + 1, len(runs), run.condition, run.seed, run.run_dir)
            run.last = train_or_resume(run.exp.cfg, run.model_cfg, run.run_dir, run.data, self.progress, run.exp)
            write_curves(run.run_dir, run.last, title(run) if title else f"{self.cfg.name}: {run.condition}, seed {run.seed}")

    def predictor(self, run: Run, options: InferenceOptions | None = None) -> Predictor:
        """The run's best checkpoint (with the run's precision and device unless ``options`` say
        otherwise); the last :data:`KEPT_PREDICTORS` loaded are kept, so that a study that
        goes over cases and runs in turn loads each checkpoint once. Studies score cached cases
        (the cache grid), so the predictor crops as the run was trained (not by the format's
        inference default), and the cases it preprocesses match the cache's."""
        t = run.exp.cfg.train
        key = (run.best, options or InferenceOptions(device=t.device, precision=t.precision,
                                                     crop=run.exp.spec.crop_nonzero))
        if key not in self._predictors:
            if len(self._predictors) >= KEPT_PREDICTORS:
                del self._predictors[next(iter(self._predictors))]
            self._predictors[key] = Predictor.from_checkpoint(*key)
        return self._predictors[key]

    def scores(self, run: Run, what: Sequence[Any], cases: list[CachedCase],
               scorer: Callable[[list[CachedCase]], Scores], whole: bool = False, summary: bool = True) -> Scores:
        """Per-case rows of ``run``'s best checkpoint on ``cases``: those in the store are
        reused, the others scored by ``scorer`` (through :mod:`pdeseg.inference.score`) and
        kept.

        Args:
            what: what is scored besides the case (split, scope, condition), part of the key.
            scorer: ``scorer(cases) -> Scores``.
            whole: the result has split-level numbers (a loss over every case's slices): the
                cases are scored in one pass and kept as one entry (rows, loss and time).
            summary: keep the time per unit beside the rows (off for callers that score one
                case at a time under one ``what``).

        Returns:
            the rows in the order of ``cases``, with the split's loss (``whole``) and the time
            per unit of the scoring that made them (``seconds``, ``units``; without
            ``summary``, of this call).
        """
        identity = self.store.identity(run.best)
        split_key = self.store.key(identity, *what, "(split)")
        if whole:
            kept = self.store.get(split_key)
            if kept is None or [r["case"] for r in kept["rows"]] != [c.case_id for c in cases]:
                result = scorer(cases)
                kept = {"loss": result.loss, "seconds": result.seconds, "units": result.units, "rows": result.rows}
                self.store.put(split_key, kept)
            return Scores(kept["rows"], kept["loss"], kept["seconds"], kept["units"])
        keys = {c.case_id: self.store.key(identity, *what, c.case_id) for c in cases}
        rows = {cid: self.store.get(k) for cid, k in keys.items()}
        kept = self.store.get(split_key) if summary else {"loss": None, "seconds": 0.0, "units": 0}
        missing = [c for c in cases if rows[c.case_id] is None]
        if missing or kept is None:
            result = scorer(missing) if missing else Scores()
            for row in result.rows:
                self.store.put(keys[row["case"]], row)
                rows[row["case"]] = row
            if kept is None or missing:
                kept = {"loss": result.loss, "seconds": result.seconds, "units": result.units}
                if summary:
                    self.store.put(split_key, kept)
        return Scores([rows[c.case_id] for c in cases], kept["loss"], kept["seconds"], kept["units"])

    def write_json(self, name: str, payload: Any) -> Path:
        path = self.out / name
        path.write_text(json.dumps(payload, indent=1, default=_plain))
        return path


def _check_kind(out: Path, kind: str) -> None:
    """Raises RunFolderError when ``out`` is a study of another runner; says what happens to
    a study folder of pdeseg 0.1.0 (no ``study.json``)."""
    marker = out / STUDY_FILE
    if marker.is_file():
        try:
            found = json.loads(marker.read_text()).get("kind")
        except (ValueError, AttributeError):
            raise RunFolderError(f"{marker}: unreadable study file; choose another --out") from None
        if found != kind:
            raise RunFolderError(f"{out} holds a {found} study, not a {kind} study; choose another --out")
    elif (out / "config.yaml").is_file() and (out / "runs").is_dir():
        log.warning("%s: a study folder of pdeseg 0.1.0; its trained runs are reused, and its scores are computed "
                    "once more into %s", out, SCORES_FILE)


def write_curves(run_dir: Path, last: dict, title: str) -> None:
    """``curves.png`` of a run (loss, accuracy, mean IoU, Dice per epoch), unless already drawn."""
    from pdeseg.viz.figures import plot_epoch_metrics

    path = Path(run_dir) / "curves.png"
    history = last["training"]["history"]
    if history and (not path.is_file() or path.stat().st_mtime < (Path(run_dir) / "last.pt").stat().st_mtime):
        plot_epoch_metrics(history, path, title=title)
