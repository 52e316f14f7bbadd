"""The options of the commands that run a model, ``evaluate`` and ``predict``: ``--checkpoint`` (or a
shipped ``--model``), the inference options (overlap, test-time augmentation, post-processing, stitching,
crop, backend), and :func:`_inference_options`, which turns a call's arguments into its one
:class:`~pdeseg.inference.options.InferenceOptions`.
"""

from __future__ import annotations

import argparse

from pdeseg.cli.options import _overlap


def _inference_options(args: argparse.Namespace):
    """The one :class:`~pdeseg.inference.options.InferenceOptions` of a predict or evaluate call."""
    from pdeseg.inference.options import InferenceOptions

    return InferenceOptions(
        device=args.device,
        precision=args.precision,
        batch_size=getattr(args, "batch_size", 16),
        overlap=args.overlap,
        tta=args.tta,
        stitch=args.stitch,
        postprocess=not args.no_postprocess,
        skip_empty=not args.segment_empty_slices,
        compile=args.compile,
        backend=args.backend,
        diameter=getattr(args, "diameter", None),
        crop=getattr(args, "crop", None),
    )


def _add_checkpoints(s: argparse.ArgumentParser, note: str = "", pretrained: bool = False) -> None:
    where = s.add_mutually_exclusive_group(required=True) if pretrained else s
    where.add_argument(
        "--checkpoint",
        required=not pretrained,
        nargs="+",
        metavar="CKPT",
        help="a checkpoint; several, or a folder of runs (every best.pt below it, e.g. the folds of "
        f"train --folds), for an ensemble whose class probabilities are averaged{note}",
    )
    if pretrained:
        where.add_argument(
            "--model",
            metavar="NAME",
            help="a pretrained model shipped with pdeseg (nuclei, hippocampus; pdeseg models lists them "
            "with their cards), in place of --checkpoint",
        )


def _add_inference_options(s: argparse.ArgumentParser) -> None:
    """``--overlap``, ``--tta`` and ``--stitch`` (see :class:`pdeseg.inference.predict.Predictor`)."""
    from pdeseg.config import STITCH_MODES  # the leaf config: parsing arguments needs no torch

    s.add_argument(
        "--overlap",
        type=_overlap,
        default=0.5,
        metavar="F",
        help="sliding-window inference (patches models): share of a window that overlaps its neighbour, 0 <= F < 1 (default 0.5)",
    )
    s.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average the class probabilities over every mirroring of the spatial "
        "axes (4 passes for 2D slices, 8 for 3D)",
    )
    s.add_argument(
        "--no-postprocess",
        action="store_true",
        help="leave out the post-processing the checkpoint's config names (postprocess: main components, small innermost region)",
    )
    s.add_argument(
        "--stitch",
        choices=STITCH_MODES,
        default="auto",
        help="where sliding-window outputs are added up: on the GPU (device), in main memory (cpu, for "
        "volumes too large for the GPU), or auto (the GPU when the output fits in its free memory)",
    )
    s.add_argument(
        "--segment-empty-slices",
        action="store_true",
        help="slice models: also segment slices whose every channel is 0 (by default they are background without running the network)",
    )
    s.add_argument(
        "--compile",
        action="store_true",
        help="run the network through torch.compile (compiled at the first batch; pays on long runs, see benchmarks/bench_predict.py)",
    )
    crop = s.add_mutually_exclusive_group()
    crop.add_argument(
        "--crop",
        dest="crop",
        action="store_const",
        const=True,
        default=None,
        help="segment only each case's non-zero box (the brain of a skull-stripped scan) and paste the "
        "result back on the input grid; same Dice, about 2.4x faster on BraTS (default: on for a model "
        "trained with data.crop_nonzero and for skull-stripped BraTS models, off otherwise)",
    )
    crop.add_argument(
        "--no-crop",
        dest="crop",
        action="store_const",
        const=False,
        help="segment the whole case, also for a model trained with data.crop_nonzero",
    )
    s.add_argument(
        "--backend",
        choices=["auto", "torch", "onnxruntime"],
        default="auto",
        help="run the network in PyTorch, or export it to ONNX when loaded and run it in ONNX Runtime (CPU, "
        "fp32); auto (default): the faster measured, ONNX Runtime on a CPU that PyTorch would run in "
        "fp32 (installed, its export reproducing PyTorch's logits), else PyTorch (bf16 on CPUs with bf16 "
        "instructions); see benchmarks/bench_predict.py",
    )
