"""The training commands, each parser beside its handler: ``plan`` (a config from the data and this
device), ``train`` (from a config, a plan made on the spot, or ``--init`` weights' own config; ``--folds``
for cross-validation) and ``crossval`` (rescore a finished cross-validation's out-of-fold cases).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pdeseg.cli.options import (
    _add_format_options,
    _check_output_file,
    _folds,
    _format_options,
    _fraction,
    _innermost,
    _load_cfg,
    _positive_int,
)


def add_plan(sub) -> None:
    s = sub.add_parser(
        "plan",
        help="configure training from the data and this device: a YAML config with a reason beside every choice, and the expected time",
    )
    s.add_argument("--data", required=True, help="data folder (any format pdeseg reads; detected from its layout)")
    _add_format_options(s, plan=True)
    s.add_argument("--out", default="plan.yaml", help="the config to write, outside the data set (default plan.yaml)")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier plan of pdeseg plan in --out")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    from pdeseg.planning import write_plan

    _check_output_file(args.out, args, "--out")
    plan = _plan_args(args)
    out = write_plan(plan, Path(args.out).expanduser())
    print(plan.summary())
    print(f"plan: {out.resolve()}")
    print(f"train it: pdeseg train --config {out}")
    return 0


def _plan_args(args: argparse.Namespace):
    """The plan of ``pdeseg plan`` and ``train --data`` without a config (see :mod:`pdeseg.planning`)."""
    from pdeseg.planning import plan_dataset

    options = _format_options(args)
    return plan_dataset(
        args.data,
        args.format,
        args.device or "auto",
        args.time_budget or "1h",
        options or None,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
    )


def add_train(sub) -> None:
    s = sub.add_parser(
        "train", help="train the config's models (one run folder each); with --data and no --config, plan the run from the data first"
    )
    s.add_argument(
        "--config",
        help="YAML experiment config (see configs/, or pdeseg plan); without it, --data is planned (pdeseg plan) and the plan trained",
    )
    s.add_argument("--data", help="data folder (overrides data.root)")
    _add_format_options(s, plan=True, defaults=False)
    s.add_argument("--out", help="output folder (overrides output_dir)")
    s.add_argument("--model", help="train only this model of the config")
    s.add_argument("--resume", action="store_true", help="continue each run from its last.pt")
    s.add_argument("--set", nargs="*", action="extend", metavar="KEY=VALUE", help="config overrides, e.g. train.epochs=2")
    s.add_argument("--overwrite", action="store_true", help="start afresh in run folders that already hold a run")
    s.add_argument("--stop-after", type=_positive_int, metavar="N", help="stop after N epochs in this call (continue later with --resume)")
    s.add_argument(
        "--init",
        metavar="NAME|CKPT",
        help="fine-tune: start from a pretrained model's weights (pdeseg models) or a checkpoint's (train.init); "
        "the config's network and task spec must match them. Without --config, the model's own training "
        "config is used (with --data and --set)",
    )
    s.add_argument(
        "--folds",
        type=_folds,
        metavar="K",
        help="patient-level K-fold cross-validation: train K runs in <run>/cv<K>/fold<i>/ and score every case "
        "once, out of fold (rerun the same command to continue)",
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    s.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from pdeseg.build import resolve
    from pdeseg.errors import ConfigError
    from pdeseg.runtime import is_main_process
    from pdeseg.training.run import run_folder, train_models

    if args.config is None and args.init is not None:
        args.config = _init_config(args)
    elif args.init is not None:
        args.set = [*(args.set or []), f"train.init={args.init}"]
    if args.config is None:
        if not args.data:
            raise ConfigError("train needs --config FILE, or --data DIR to plan a run from the data (pdeseg plan)")
        from pdeseg.planning import write_plan

        plan = _plan_args(args)
        out_dir = Path(args.out or plan.config["output_dir"]) / plan.config["name"]
        args.config = str(write_plan(plan, out_dir / "plan.yaml"))
        print(plan.summary(), flush=True)
        print(f"plan: {Path(args.config).resolve()} (edit it and train with --config to change it)", flush=True)
    elif args.time_budget is not None or args.format is not None or args.format_option or args.device is not None:
        raise ConfigError(
            "--time-budget, --device, --format and --format-option plan a run from the data; with --config "
            "the config decides (set train.epochs, train.device, data.format, data.format_options there)"
        )
    exp = resolve(_load_cfg(args))
    cfg = exp.cfg
    models = [m for m in cfg.models if args.model is None or m.name == args.model]
    if not models:
        raise ConfigError(f"--model {args.model}: not in the config's models ({', '.join(m.name for m in cfg.models)})")
    if args.folds is not None:
        from pdeseg.experiments.crossval import check_crossval_config, run_crossval

        check_crossval_config(cfg, args.folds)
        if args.stop_after is not None or args.overwrite:
            raise ConfigError(
                "--folds continues its folds by itself (rerun the same command); it takes no --stop-after "
                "or --overwrite: use another output folder to start afresh"
            )
        for m in models:
            out = run_folder(cfg, m) / f"cv{args.folds}"
            run_crossval(cfg, m, out, args.folds, progress=not args.no_progress, exp=exp)
            if is_main_process():
                print((out / "summary.md").read_text())
                print(f"out-of-fold rows: {out / 'oof_cases.csv'}")
        return 0
    runs = train_models(
        exp, models, resume=args.resume, progress=not args.no_progress, stop_after=args.stop_after, overwrite=args.overwrite
    )
    for m in models:
        run_dir, result = runs[m.name]
        if is_main_process():
            shown = (
                f"train loss {-result.best_score:.4f}"
                if cfg.train.monitor == "train_loss"
                else f"{cfg.train.monitor} {result.best_score:.4f}"
            )
            print(f"{m.name}: best {shown} at epoch {result.best_epoch}; checkpoint {run_dir / 'best.pt'}")
    return 0


def _init_config(args: argparse.Namespace) -> str:
    """``train --init X`` without ``--config``: the weights' own training config (their task
    spec, network and schedule), named ``<name>_finetune``, with ``train.init`` set, written
    beside the run folders as ``<out>/<name>_finetune.yaml``; returns its path."""
    import yaml

    from pdeseg.errors import ConfigError
    from pdeseg.pretrained.init import init_checkpoint

    if not args.data:
        raise ConfigError("train --init without --config needs --data DIR: the images to fine-tune on")
    if args.time_budget is not None or args.format_option or args.device is not None:
        raise ConfigError(
            "train --init keeps the model's task spec: --time-budget, --device and --format-option do not "
            "apply (set train.epochs, train.device with --set)"
        )
    where, ckpt = init_checkpoint(args.init)
    stored = ckpt.get("config")
    if not isinstance(stored, dict):
        raise ConfigError(f"--init {args.init}: {where} carries no training config; give --config")
    data = {**stored, "name": f"{stored.get('name', 'model')}_finetune", "train": {**stored.get("train", {}), "init": args.init}}
    data["data"] = {k: v for k, v in stored.get("data", {}).items() if k != "cache_dir"}  # the default cache
    if args.format is not None:
        data["data"]["format"] = args.format
    out = Path(args.out or data.get("output_dir") or "runs")
    path = out / f"{data['name']}.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    print(f"fine-tuning config: {path.resolve()} (the weights' own; edit it and train with --config to change it)", flush=True)
    args.format = None
    return str(path)


def add_crossval(sub) -> None:
    s = sub.add_parser(
        "crossval",
        help="score the out-of-fold cases of a finished train --folds again with test-time "
        "augmentation or post-processing; paired tests against another table",
    )
    s.add_argument("cv_dir", help="the cv<K> folder of pdeseg train --folds K")
    s.add_argument("--name", required=True, help="sub-folder of cv_dir for this variant's oof_cases.csv and summary.md")
    s.add_argument("--tta", action="store_true", help="mirror test-time augmentation (the fold models segment again)")
    s.add_argument(
        "--min-component-fraction",
        type=_fraction,
        metavar="F",
        help="remove foreground components smaller than F times the largest (0 < F <= 1)",
    )
    s.add_argument(
        "--min-innermost-voxels",
        type=_innermost,
        metavar="N|auto",
        help="relabel the innermost region (BraTS ET -> NCR) when under N voxels; auto: N chosen per fold on the other folds' cases",
    )
    s.add_argument(
        "--against", metavar="PATH", help="reference oof_cases.csv (or its folder) for the paired tests (default: the cross-validation's)"
    )
    s.add_argument("--data", help="data folder (default: the one the runs were trained on)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_crossval)


def cmd_crossval(args: argparse.Namespace) -> int:
    from pdeseg.experiments.crossval import rescore_crossval

    result = rescore_crossval(
        args.cv_dir,
        args.name,
        args.tta,
        args.min_component_fraction,
        args.min_innermost_voxels,
        args.against,
        args.data,
        progress=not args.no_progress,
    )
    print((result.out_dir / "summary.md").read_text())
    print(f"per-case metrics: {result.out_dir / 'oof_cases.csv'}")
    return 0
