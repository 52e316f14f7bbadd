"""From a config to a trained run folder: resolve, prepare data, build objects, train or resume.

The run folder of one model holds ``config.yaml`` (resolved), ``split.json``,
``metrics.csv`` (one row per epoch: loss, pixel accuracy, mean IoU, Dice on train and
validation), ``tb/`` (TensorBoard), ``best.pt`` (best
monitored score) and ``last.pt`` (everything needed to resume exactly), and, while a run
writes it, the lock file ``.pdeseg.lock`` (see :mod:`pdeseg.runlock`).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from pdeseg.build import Experiment, build_loss, checkpoint_meta, build_network, build_optimizer, build_scheduler, resolve
from pdeseg.checkpoint import load_checkpoint, remove_stale_temporaries
from pdeseg.config import ExperimentConfig, ModelConfig, save_config
from pdeseg.data.files import make_folders, remove_empty
from pdeseg.data.pipeline.prepare import PreparedData, prepare_data, steps_per_epoch
from pdeseg.data.pipeline.sampling import training_dataset
from pdeseg.data.pipeline.splits import save_split
from pdeseg.errors import ConfigError, RunFolderError
from pdeseg.inference.options import InferenceOptions
from pdeseg.inference.predict import Predictor
from pdeseg.inference.score import default_scope, score, scoring_rules
from pdeseg.runlock import RunLock
from pdeseg.runtime import barrier, check_compile, init_distributed, launch_rank, resolve_device, resolve_precision, seed_everything
from pdeseg.training.trainer import RunContext, Trainer, TrainResult

log = logging.getLogger(__name__)


def _check_run_folder(run_dir: Path, resume: bool, overwrite: bool, epochs: int) -> dict | None:
    """The ``last.pt`` to resume from, or None for a fresh start.

    Raises:
        RunFolderError: the folder holds a run and neither resume nor overwrite was asked, a
            resume has nothing to resume, or a resume asks for a different epoch count.
    """
    last = run_dir / "last.pt"
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"{run_dir} is a file, not a run folder")
    if last.is_file() and not (resume or overwrite):
        raise RunFolderError(f"{run_dir} already holds a run (last.pt); continue it with --resume, "
                             "start afresh with --overwrite, or choose another --out")
    if not resume:
        return None
    if not last.is_file():
        raise RunFolderError(f"--resume: no {last} to resume from (was this run started?)")
    state = load_checkpoint(last)
    planned = state.get("config", {}).get("train", {}).get("epochs")
    if planned is not None and planned != epochs:
        raise RunFolderError(f"{run_dir} was planned for {planned} epochs (its learning-rate schedule spans them) but "
                             f"train.epochs is now {epochs}; resume with train.epochs={planned}, or start a new run")
    return state


@contextlib.contextmanager
def _locked_run_folder(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s :class:`~pdeseg.runlock.RunLock` for the body.

    The folder (and missing parents) is created for the lock file. If the body fails before
    the run's first checkpoint, a run folder created here is removed again with what the run
    wrote in it (config, split, logs), and so are the parents created here, so a refused or
    failed start leaves nothing behind. A folder that existed before is left as it was found
    (apart from what the run itself replaced).

    Raises:
        RunFolderError: ``run_dir`` is a file or cannot be created, or another run holds it.
    """
    created = make_folders(run_dir, "run folder")
    try:
        with RunLock(run_dir):
            yield
    except BaseException:
        if created and created[-1] == run_dir and not (run_dir / "last.pt").exists():
            for path in run_dir.iterdir():  # all of it written by this call, and no checkpoint to resume from
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        remove_empty(created)
        raise


def run_folder(cfg: ExperimentConfig, model_cfg: ModelConfig) -> Path:
    """Where a model of ``cfg`` trains: ``<output_dir>/<config name>/<model name>/``, for
    ``pdeseg train`` and :func:`pdeseg.train` alike."""
    return Path(cfg.output_dir).expanduser() / cfg.name / model_cfg.name


def train_models(
    exp: Experiment | ExperimentConfig,
    models: list[ModelConfig] | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    overwrite: bool = False,
) -> dict[str, tuple[Path, TrainResult]]:
    """Train ``models`` (default: every model of the config) one after another, each into its
    :func:`run_folder`, and draw its loss and metric curves there (``curves.png``): the one
    code path of ``pdeseg train --config`` and :func:`pdeseg.train`.

    Args:
        exp: the resolved config (:func:`pdeseg.build.resolve`), or a config to resolve (after
            the check of its model names).
        models: a selection of ``exp.cfg.models``.
        resume, progress, stop_after, overwrite: as for :func:`train_model`.

    Returns:
        model name -> ``(run folder, TrainResult)``, in the config's order.

    Raises:
        ConfigError: two models of one name (they would share a run folder); see also
            :func:`train_model`.
    """
    from pdeseg.runtime import is_main_process

    cfg = exp if isinstance(exp, ExperimentConfig) else exp.cfg
    models = list(cfg.models) if models is None else list(models)
    names = [m.name for m in models]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"the config names model {repeated[0]!r} twice; each model trains into "
                          f"<output_dir>/{cfg.name}/<model name>: train them with separate configs")
    if isinstance(exp, ExperimentConfig):
        exp = resolve(exp)
    out: dict[str, tuple[Path, TrainResult]] = {}
    for m in models:
        run_dir = run_folder(exp.cfg, m)
        result = train_model(exp.cfg, m, run_dir, resume=resume, progress=progress, stop_after=stop_after,
                             overwrite=overwrite, exp=exp)
        if is_main_process() and result.history:
            from pdeseg.viz.figures import plot_epoch_metrics

            plot_epoch_metrics(result.history, run_dir / "curves.png", title=f"{exp.cfg.name}: {m.name}")
        out[m.name] = (run_dir, result)
    return out


def train_model(
    cfg: ExperimentConfig,
    model_cfg: ModelConfig,
    run_dir: str | Path,
    resume: bool = False,
    data: PreparedData | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    overwrite: bool = False,
    exp: Experiment | None = None,
) -> TrainResult:
    """Train one model of ``cfg`` into ``run_dir``.

    The process that writes the run folder (rank 0 under ``torchrun``) holds its
    :class:`~pdeseg.runlock.RunLock` from before the folder is first read until training
    returns, and first removes temporary checkpoint files that killed runs left there.

    Args:
        cfg: the experiment config (resolved here unless ``exp`` is given).
        model_cfg: which registered model to train.
        run_dir: this model's run folder (created; removed again, if it was created here
            and is still empty, when the run fails before writing anything).
        resume: continue from ``run_dir/last.pt`` (its split, epoch counter and RNG states).
        data: prepared data to reuse (else prepared from ``cfg``, reusing ``split.json``).
        progress: show progress (a bar on a terminal, log lines otherwise).
        stop_after: train at most this many epochs in this call, then return.
        overwrite: start afresh even if ``run_dir`` already holds a run.
        exp: ``cfg`` already resolved.

    Returns:
        The run's best score and epoch and its per-epoch history.

    Raises:
        ConfigError: a config value the data set or registries reject (before any data are read).
        RunFolderError: another run holds ``run_dir``, it cannot be created, or see
            :func:`_check_run_folder`.
        DataError: bad data.
    """
    exp = exp or resolve(cfg)
    run_dir = Path(run_dir)
    device = resolve_device(exp.cfg.train.device)  # a missing GPU is a config matter: say so before touching any folder
    resolve_precision(exp.cfg.train.precision, device)  # and a precision it cannot run
    if exp.cfg.train.compile:
        check_compile(device, "train.compile")  # and a torch.compile that cannot work here
    if exp.cfg.train.init and not resume:  # weights that are not this network or task: refused before any data are read
        from pdeseg.pretrained.init import check_compatible, init_checkpoint

        where, ckpt = init_checkpoint(exp.cfg.train.init)
        check_compatible(ckpt, where, exp.spec, model_cfg.name, exp.model_kwargs(model_cfg))
    with _locked_run_folder(run_dir) if launch_rank() == 0 else contextlib.nullcontext():
        return _train(exp, model_cfg, run_dir, device, resume, data, progress, stop_after, overwrite)


def _train(exp: Experiment, model_cfg: ModelConfig, run_dir: Path, device: torch.device, resume: bool,
           data: PreparedData | None, progress: bool, stop_after: int | None, overwrite: bool) -> TrainResult:
    """:func:`train_model` once the run folder is held."""
    cfg, spec, t = exp.cfg, exp.spec, exp.cfg.train
    state = _check_run_folder(run_dir, resume, overwrite, t.epochs)
    precision = resolve_precision(t.precision, device)
    rank, world = init_distributed(device)
    split_file = run_dir / "split.json"
    if rank == 0:
        remove_stale_temporaries(run_dir)
        if overwrite and not resume:
            split_file.unlink(missing_ok=True)  # draw the split from the config again
    if data is None:
        if rank == 0:
            data = prepare_data(cfg.data, spec, split_file, progress=progress)
        barrier()
        if rank != 0:
            data = prepare_data(cfg.data, spec, split_file, progress=False)
    if t.monitor != "train_loss" and not data.split["val"]:
        raise ConfigError(f"train.monitor {t.monitor!r} needs validation cases but the split has none "
                          f"({len(data.split['train'])} training cases); set train.monitor: train_loss or use more cases")
    if rank == 0:  # the run folder's files are written once the data are known to be good
        save_split(data.split, split_file)
        save_config(cfg, run_dir / "config.yaml")

    train_set = training_dataset(data.cases("train"), spec, cfg.data, t.seed)
    log.info("training %s on %d %s, validating on %d cases (%s, precision %s)", model_cfg.name, len(train_set),
             spec.mode, len(data.split["val"]), device, precision)
    seed_everything(t.seed)
    model = build_network(exp, model_cfg)
    if t.init and state is None:  # fine-tuning: start from trained weights (a resumed run has its own in last.pt)
        from pdeseg.pretrained.init import load_init

        load_init(model, t.init, spec, model_cfg.name, exp.model_kwargs(model_cfg))
    model = model.to(device)
    channels_last = t.channels_last and spec.spatial_dims == 2
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(cfg.loss, exp.head).to(device)
    optimizer = build_optimizer(t, model)
    scheduler = build_scheduler(t, optimizer, steps_per_epoch(len(train_set), t.batch_size, world))
    meta = checkpoint_meta(exp, model_cfg, model)
    val_cases = data.cases("val")
    scope = default_scope(spec)

    def validate(net) -> object:
        predictor = Predictor(net, spec, device, InferenceOptions(precision=precision, batch_size=t.val_batch_size), model_cfg.name)
        return score(predictor, val_cases, scope, loss_fn)

    run = RunContext(run_dir, t, meta, device, precision, rank, world, channels_last, cfg.data.num_workers, progress,
                     model_cfg.name, exp.head)
    trainer = Trainer(model, loss_fn, optimizer, scheduler, train_set, validate=validate if val_cases else None,
                      rules=scoring_rules(spec), run=run)
    if state is not None:
        trainer.load_state(state)
        log.info("resuming %s from epoch %d", run_dir, trainer.epoch)
    return trainer.fit(stop_after)


def train_or_resume(cfg: ExperimentConfig, model_cfg: ModelConfig, run_dir: Path, data: PreparedData,
                    progress: bool = True, exp: Experiment | None = None) -> dict:
    """Train ``run_dir`` to ``cfg.train.epochs``: a new run, a resumed interrupted one, or
    nothing for a finished one (how ``compare`` and ``ablate`` continue). Returns ``last.pt``."""
    last_path = Path(run_dir) / "last.pt"
    started = last_path.is_file()
    last = load_checkpoint(last_path) if started else None
    if last is None or last["training"]["epoch"] < cfg.train.epochs:
        train_model(cfg, model_cfg, run_dir, resume=started, data=data, progress=progress, exp=exp)
        last = load_checkpoint(last_path)
    return last
