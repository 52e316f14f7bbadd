"""Command line: ``pdeseg {demo,compare,ablate,robustness,phantom,fingerprint,plan,export,export-nnunet,train,
crossval,evaluate,predict,inspect,models}``.

A thin layer over the Python API; every command logs progress to stderr. This module holds the top-level
parser, the entry point :func:`main` (``pdeseg = pdeseg.cli:main``) and its error rule; each command's
subparser and handler live together in a module of its group:

* :mod:`pdeseg.cli.studies`: ``demo``, ``compare``, ``ablate``, ``robustness``;
* :mod:`pdeseg.cli.data`: ``phantom``, ``fingerprint``, ``export-nnunet``;
* :mod:`pdeseg.cli.training`: ``plan``, ``train``, ``crossval``;
* :mod:`pdeseg.cli.prediction`: ``evaluate``, ``predict`` and their inference options;
* :mod:`pdeseg.cli.checkpoints`: ``export``, ``inspect``, ``models``;
* :mod:`pdeseg.cli.options`: argument types and options several commands share.

Only the standard library is imported here: each handler imports what it runs, so ``--help`` needs no torch.
"""

from __future__ import annotations

import argparse
import logging

from pdeseg.cli import checkpoints, data, prediction, studies, training

log = logging.getLogger("pdeseg")

# the commands in the order ``pdeseg --help`` lists them
COMMANDS = (
    studies.add_demo,
    studies.add_compare,
    studies.add_ablate,
    studies.add_robustness,
    data.add_phantom,
    data.add_fingerprint,
    training.add_plan,
    checkpoints.add_export,
    data.add_export_nnunet,
    training.add_train,
    training.add_crossval,
    prediction.add_evaluate,
    prediction.add_predict,
    checkpoints.add_inspect,
    checkpoints.add_models,
)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``pdeseg`` parser; each subcommand's parser sets ``func``, its handler."""
    p = argparse.ArgumentParser(prog="pdeseg", description="PDE-informed segmentation networks and losses, 2D and 3D.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from pdeseg.errors import PdesegError

    # a user's mistake (config, data, checkpoint, device, folders) is reported in one line;
    # anything else is a bug in pdeseg and shows its traceback
    try:
        return args.func(args)
    except PdesegError as exc:
        if args.verbose:
            raise
        log.error("%s (run with -v for the traceback)", exc)
        return 2
