"""``pdeseg predict`` on OME-TIFF / OME-Zarr images: tiled, so an image of any size is
segmented in bounded memory (:mod:`pdeseg.inference.tiling`), in one process or on Dask.

Where results go:

* ``tiff``: ``<output>/<image>_instances.ome.tif`` (cell ids, uint32) or
  ``<image>_classes.ome.tif`` (uint8), a tiled OME-TIFF with the pixel size of the level
  segmented;
* ``zarr`` (OME-Zarr inputs only): a multiscale ``labels/<name>`` group inside the input image
  (``ome-zarr`` and napari open it as labels over the image).

Every output is checked before any image is read: the labels name is one plain name
(:func:`pdeseg.data.outputs.check_name`), an OME-TIFF output lies outside every input image,
and an existing output is replaced only with ``overwrite`` and only when pdeseg wrote it (its
marker, :func:`pdeseg.data.outputs.written_by_pdeseg`), so someone else's label layer is never
deleted. Scratch stores of the tiles live beside the output (``<output>/`` for OME-TIFF,
``<image>/labels/`` for OME-Zarr), are removed on every exit Python sees, and a scratch folder
left by a killed run is reclaimed by the next run (:func:`pdeseg.inference.tiling.scratch.reclaim_scratch`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdeseg.data.files import blocking_path, describe_blocker, make_folders, remove_empty
from pdeseg.data.outputs import check_distinct, check_name, check_outside, check_replaceable, written_by_pdeseg
from pdeseg.data.readers.ome import (OmeImage, find_ome_images, open_ome, plane_shape, require_ome, write_ome_tiff,
                                     write_ome_zarr_labels)
from pdeseg.errors import ConfigError, DataError, PdesegError, RunFolderError
from pdeseg.inference.shard import select_shard
from pdeseg.inference.tiling import (DEFAULT_HALO, DEFAULT_TILE, DaskRunner, LocalRunner, OmeSource, check_tileable,
                                     predict_tiled)

log = logging.getLogger(__name__)

OUTPUTS = ("auto", "tiff", "zarr")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


@dataclass
class _Plan:
    image: Path
    ome: OmeImage
    level: int
    source: OmeSource
    target: Path
    kind: str


def output_kind(image: Path, output: str) -> str:
    """``tiff`` or ``zarr`` for ``image`` under the ``output`` choice."""
    if output not in OUTPUTS:
        raise ConfigError(f"OME output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    is_zarr = image.is_dir()
    if output == "zarr" and not is_zarr:
        raise ConfigError(f"{image} is an OME-TIFF: labels go into an OME-Zarr image only; use the tiff output")
    if output == "auto":
        return "zarr" if is_zarr else "tiff"
    return output


def plan_image(predictor, image: Path, out_dir: Path | None, *, channels: Sequence[str] | None = None,
               level: int | None = None, output: str = "auto", name: str = "pdeseg", instances: bool = True) -> _Plan:
    """Open ``image`` and decide what is read and written.

    Raises:
        DataError: a channel or level the image does not have, a Z stack or time series, or
            no level as fine as the model's training resolution.
        ConfigError: ``name`` is not a plain name (zarr output).
    """
    kind = output_kind(image, output)
    if kind == "zarr":
        check_name(name, "--labels-name")
    ome = open_ome(image)
    wanted = None
    if level is None and predictor.spec.target_spacing is not None:
        wanted = tuple(predictor.spec.target_spacing[:2])
    chosen = ome.choose_level(level, wanted)
    shape = plane_shape(ome, chosen)
    made_of = ome.channel_indices(predictor.modalities, channels)
    source = OmeSource(str(image), chosen, tuple(tuple(c) for c in made_of), shape, str(ome.dtype))
    if kind == "zarr":
        target = image / "labels" / name
    else:
        if out_dir is None:
            raise ConfigError("the tiff output needs an output folder")
        target = out_dir / f"{_stem(image)}_{'instances' if instances else 'classes'}.ome.tif"
    return _Plan(image, ome, chosen, source, target, kind)


def _check_targets(plans: list[_Plan], overwrite: bool) -> None:
    """Every target can be written, outside the inputs (OME-TIFF) or as ``labels/<name>`` of
    its own image (OME-Zarr), and replaces only an earlier output of pdeseg.

    Raises:
        RunFolderError: see :func:`pdeseg.data.outputs.check_replaceable` and
            :func:`pdeseg.data.outputs.check_outside`.
    """
    check_distinct({str(p.image): [p.target.resolve()] for p in plans}, items="images")  # case differences count as one
    for plan in plans:
        folder = plan.target.parent
        blocker = blocking_path(folder)
        if blocker is not None:
            raise RunFolderError(f"{blocker} {describe_blocker(blocker)}, so {folder} cannot be created; choose another --output")
        what = "--labels-name" if plan.kind == "zarr" else "--output"
        if plan.kind == "tiff":
            check_outside(plan.target, [p.image for p in plans], "--output")
        elif plan.target.resolve().parent != (plan.image / "labels").resolve():
            raise RunFolderError(f"{plan.target} does not lie in {plan.image / 'labels'} (a symbolic link?); choose another "
                                 "--labels-name")
        check_replaceable(plan.target, overwrite, what)


def _tiles_in_order(labels, tile: int):
    """The output's tiles in row-major order, ``tile x tile`` each (edges zero-padded), one at a time."""
    h, w = labels.shape
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            block = np.asarray(labels[y: y + tile, x: x + tile])
            if block.shape != (tile, tile):
                padded = np.zeros((tile, tile), dtype=block.dtype)
                padded[: block.shape[0], : block.shape[1]] = block
                block = padded
            yield block


def export(result, plan: _Plan, tile: int) -> Path:
    """Copy a :class:`~pdeseg.inference.tiling.TiledResult` to the plan's target, chunk by chunk."""
    pixel = plan.ome.levels[plan.level].pixel_size
    labels = result.labels
    if plan.kind == "tiff":
        plan.target.parent.mkdir(parents=True, exist_ok=True)
        return write_ome_tiff(plan.target, _tiles_in_order(labels, tile), labels.shape, labels.dtype, tile, pixel,
                              name=plan.target.name)
    import dask.array as da

    if plan.target.exists():
        import shutil

        if not written_by_pdeseg(plan.target):  # checked before any work; checked again before deleting
            raise RunFolderError(f"{plan.target} was not written by pdeseg; it is not replaced")
        shutil.rmtree(plan.target)
    return write_ome_zarr_labels(plan.image, plan.target.name, da.from_zarr(labels), pixel, chunk=min(tile, 1024))


def predict_ome(checkpoint, input_path: str | Path, output_dir: str | Path | None, options=None, *,
                channels: Sequence[str] | None = None, level: int | None = None, output: str = "auto",
                labels_name: str = "pdeseg", tile: int = DEFAULT_TILE, halo: int = DEFAULT_HALO,
                shard: tuple[int, int] | None = None, overwrite: bool = False, dask_workers: int | None = None,
                dask_address: str | None = None, progress: bool = True):
    """Segment the OME images at ``input_path`` (one, or a folder of them) tile by tile.

    Args:
        checkpoint: checkpoint file(s) of a 2D slice model.
        input_path: an OME-TIFF file, an OME-Zarr image folder, or a folder holding them.
        output_dir: where OME-TIFF outputs go.
        options: :class:`~pdeseg.inference.options.InferenceOptions` (``postprocess`` must be off
            when the checkpoint names whole-image rules).
        channels: file channel names, one per model channel (default: by the model's names).
        level: pyramid level (default: the coarsest as fine as the model's ``target_spacing``,
            else 0).
        output: ``auto`` (labels into an OME-Zarr input, an OME-TIFF beside the others),
            ``tiff`` or ``zarr``.
        labels_name: name of the labels group in an OME-Zarr.
        tile, halo: see :func:`pdeseg.inference.tiling.predict_tiled`.
        shard: ``(i, n)``: this copy's share of the images (:mod:`pdeseg.inference.shard`).
        overwrite: replace existing outputs.
        dask_workers, dask_address: run the tiles on Dask (a LocalCluster, or a scheduler).
        progress: show progress.

    Returns:
        a :class:`~pdeseg.inference.folder.PredictionReport`.

    Raises:
        DataError: no OME image there, or one without the asked channel or a suitable level.
        RunFolderError: an output exists (without ``overwrite``) or cannot be made.
        ConfigError: bad options.
        MissingExtraError: the ``ome`` extra (or for Dask the ``distributed`` one) is not installed.
    """
    from pdeseg.inference.options import InferenceOptions
    from pdeseg.inference.folder import PredictionReport
    from pdeseg.inference.predict import Predictor

    options = options or InferenceOptions()
    images = find_ome_images(input_path)
    if not images:
        raise DataError(f"{input_path}: no OME-TIFF (.ome.tif) or OME-Zarr (.ome.zarr) image there")
    for kind in sorted({"OME-Zarr" if p.is_dir() else "OME-TIFF" for p in images}):  # before any work: one line naming pdeseg[ome]
        require_ome(kind, "predicting on")
    mine = select_shard(images, shard, key=lambda p: p.name)
    if shard is not None:
        log.info("shard %d/%d: %d of %d image(s)", shard[0], shard[1], len(mine), len(images))
    predictor = Predictor.from_checkpoints(checkpoint, options)
    check_tileable(predictor)
    instances = predictor.format.has_cells
    out_dir = Path(output_dir).expanduser() if output_dir is not None else None
    report = PredictionReport()
    plans = []
    for image in mine:
        plans.append(plan_image(predictor, image, out_dir, channels=channels, level=level, output=output,
                                name=labels_name, instances=instances))
    _check_targets(plans, overwrite)
    runner = DaskRunner(dask_workers, 1, dask_address) if (dask_workers or dask_address) else LocalRunner()
    created: list[Path] = []
    try:
        for plan in plans:
            log.info("%s: level %d (%s), channels %s", plan.image.name, plan.level,
                     "x".join(map(str, plan.source.shape)), plan.source.channels)
            scratch_dir = plan.target.parent  # the output's own place, never beside the input image
            created += make_folders(scratch_dir, "--output" if plan.kind == "tiff" else "labels group")
            try:
                result = predict_tiled(checkpoint, plan.source, options=options,
                                       predictor=predictor, tile=tile, halo=halo, instances=instances, runner=runner,
                                       scratch_dir=scratch_dir, progress=progress)
            except PdesegError as exc:
                report.skipped[plan.image.name] = str(exc)
                log.warning("skipped %s: %s", plan.image.name, exc)
                continue
            try:
                path = export(result, plan, result.grid.tile)
            except OSError as exc:
                raise RunFolderError(f"cannot write {plan.target}: {exc}") from exc
            finally:
                result.cleanup()
            what = f"{result.objects} cells" if instances else "classes"
            log.info("%s -> %s (%s)", plan.image.name, path, what)
            report.written.append(path)
    finally:
        if isinstance(runner, DaskRunner):
            runner.close()
        if not report.written:
            remove_empty(created)
    return report
