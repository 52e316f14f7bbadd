"""Tiled prediction of images larger than memory (pdeseg.inference.tiling): the grid, the
normalisation over the whole image, equality with whole-image prediction (classes exactly;
cells away from the seams), cells cut by a seam joined, ids unique, windows read one at a time,
and the same labels from a 2-worker Dask LocalCluster."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from conftest import shared_data
from pdeseg.config import TaskSpec
from pdeseg.data.pipeline.label_geometry import predicted_instances
from pdeseg.data.pipeline.preprocess import apply_normalization, image_stats, merge_stats, normalize
from pdeseg.errors import ConfigError
from pdeseg.inference.options import InferenceOptions
from pdeseg.inference.predict import Predictor
from pdeseg.inference.tiling import TileGrid, predict_tiled
from pdeseg.nn.output import predicted_classes

OPTIONS = InferenceOptions(device="cpu", precision="32", postprocess=False)


@pytest.mark.parametrize("shape", [(300, 517), (256, 256), (37, 1000)])
def test_grid_cores_cover_the_image_once_and_windows_lie_on_the_pooling_grid(shape):
    g = TileGrid(*shape, tile=128, halo=32, band=8, multiple=16)
    hits = np.zeros(shape, np.int32)
    hy, by, hx, bx = g.canvas
    assert hy % 16 == 0 and hx % 16 == 0 and by == (hy - shape[0]) // 2
    for t in g.tiles():
        y0, y1, x0, x1 = g.core(t)
        assert y1 > y0 and x1 > x0
        hits[y0:y1, x0:x1] += 1
        wy0, wy1, wx0, wx1 = g.window(t)
        # windows start on the whole image's padded grid and are whole multiples of it
        assert (wy0 + by) % 16 == 0 and (wx0 + bx) % 16 == 0 and (wy1 - wy0) % 16 == 0 and (wx1 - wx0) % 16 == 0
        assert wy0 <= y0 - min(32, y0 + by) and wy1 >= min(y1 + 32, hy - by)
    assert (hits == 1).all()
    assert len(g.pairs()) == sum(1 for (i, j) in g.tiles() for di, dj in ((0, 1), (1, 0), (1, 1), (1, -1))
                                 if 0 <= i + di < g.shape[0] and 0 <= j + dj < g.shape[1])


def test_bad_tile_sizes_are_refused():
    with pytest.raises(ConfigError, match="tile must be a positive multiple of 16"):
        TileGrid(100, 100, tile=100)
    with pytest.raises(ConfigError, match="halo must be a multiple of 16"):
        TileGrid(100, 100, tile=64, halo=10, band=4)
    with pytest.raises(ConfigError, match=r"halo \(--halo\) must be at least 32 pixels"):  # the seam band needs it
        TileGrid(100, 100, tile=64, halo=16, band=32)


_METHODS = [("zscore", None, None), ("zscore_all", None, None), ("minmax", None, None), ("scale255", None, None),
            ("ct", (-100.0, 2500.0), None), ("ct", (-100.0, 2500.0), (900.0, 400.0)), ("ct", (5000.0, 6000.0), None)]


@pytest.mark.parametrize("method, window, ct_stats", _METHODS)
def test_tiles_are_normalised_exactly_as_the_whole_image(method, window, ct_stats):
    """Statistics merged over the tiles and the one apply step give each tile the values the
    whole image gets (the last ct case: no pixel in the window, the fallback over every pixel)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, size=(2, 90, 130)).astype(np.uint16)
    image[:, :20] = 0  # background that z-score and minmax leave out
    whole = normalize(image.astype(np.float32), method, window, ct_stats)
    g = TileGrid(90, 130, tile=32, halo=16, band=4)
    blocks = [image_stats(image[:, y0:y1, x0:x1].astype(np.float32), method, window, ct_stats, mergeable=True)
              for y0, y1, x0, x1 in map(g.core, g.tiles())]
    stats = merge_stats(blocks)
    assert (stats is None) == (method == "scale255" or ct_stats is not None)
    for y0, y1, x0, x1 in map(g.core, g.tiles()):
        tile = apply_normalization(image[:, y0:y1, x0:x1].astype(np.float32), method, stats, window, ct_stats)
        np.testing.assert_array_equal(tile, whole[:, y0:y1, x0:x1])


@pytest.mark.parametrize("method", ["zscore", "zscore_all", "ct"])
def test_float_tiles_merge_to_the_whole_image_statistics(method):
    """A float image (no histogram needed): merged mean and sd agree with the whole image's to
    rounding, and the tiles' values with the whole image's to float32 rounding."""
    rng = np.random.default_rng(1)
    image = rng.normal(300.0, 80.0, size=(3, 45, 61)).astype(np.float32)
    image[:, :9] = 0
    window = (100.0, 500.0) if method == "ct" else None
    whole = image_stats(image, method, window)
    merged = merge_stats(image_stats(image[:, y:y + 16], method, window, mergeable=True) for y in range(0, 45, 16))
    for w, m in zip(whole.channels, merged.channels):
        assert w.count == m.count and m.mean == pytest.approx(w.mean, rel=1e-12) and m.std == pytest.approx(w.std, rel=1e-12)
    reference = normalize(image, method, window)
    for y in range(0, 45, 16):
        np.testing.assert_allclose(apply_normalization(image[:, y:y + 16], method, merged, window), reference[:, y:y + 16],
                                   rtol=0, atol=1e-6)


class _Threshold(torch.nn.Module):
    """A pointwise 'network': interior where the image is above 0.5 sd, boundary between 0
    and 0.5 sd, background below: its output at a pixel depends on that pixel alone."""

    def forward(self, x):
        v = x[:, :1]
        return torch.cat([-v * 8, 4 - (v - 1.2).abs() * 8, 4 - (v - 0.25).abs() * 16], 1)


def _blobs(shape=(300, 420), n=90, seed=1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.zeros(shape, np.float32)
    for _ in range(n):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(4, 9)
        img = np.maximum(img, np.clip(1.3 - np.hypot(yy - cy, xx - cx) / r, 0, None) * 200)
    return img[None]


_SPEC = TaskSpec(format="cell_folder", modalities=["grey"], class_names=["background", "interior", "boundary"],
                 num_classes=3, normalization="zscore_all", mode="slices", spatial_dims=2, spatial_size=[64, 64])


def _whole_and_tiled(p, image, reads=None, **grid):
    norm = normalize(image, "zscore_all").astype(np.float16).astype(np.float32)
    classes = predicted_classes(p.predict_logits(norm[..., None])[None], p.head)[0, ..., 0].numpy().astype(np.uint8)
    whole = predicted_instances(classes)

    class Source:
        shape, channels, dtype = image.shape[1:], 1, np.dtype(np.float32)

        def read(self, y0, y1, x0, x1):
            if reads is not None:
                reads.append((y1 - y0) * (x1 - x0))
            return image[:, y0:y1, x0:x1]

    result = predict_tiled(None, Source(), options=OPTIONS, predictor=p, instances=True, progress=False, **grid)
    try:
        tiled = result.labels[:]
    finally:
        result.cleanup()
    return whole, tiled, result


def test_pointwise_model_tiled_equals_whole_image_with_cut_cells_joined():
    """With a network whose output at a pixel depends on that pixel only, tiled prediction must
    equal whole-image prediction exactly, cells cut by seams joined into one id each (cells
    smaller than the halo)."""
    p = Predictor(_Threshold(), _SPEC, torch.device("cpu"), OPTIONS)
    reads: list[int] = []
    whole, tiled, result = _whole_and_tiled(p, _blobs(), reads, tile=64, halo=32, band=8)
    cut = sum(1 for u in range(1, whole.max() + 1) if len(np.unique(_tile_of(result.grid, whole == u))) > 1)
    assert cut >= 10  # many cells cross a seam
    _assert_same_partition(whole, tiled)
    assert tiled.max() == result.objects == len(np.unique(tiled)) - 1  # ids 1..N, unique
    assert max(reads) <= (64 + 2 * 32) ** 2  # one window at a time, never the image


def _tile_of(grid, mask):
    ys, xs = np.nonzero(mask)
    hy, by, hx, bx = grid.canvas
    return (ys + by) // grid.tile * 1000 + (xs + bx) // grid.tile


def _assert_same_partition(a: np.ndarray, b: np.ndarray) -> None:
    assert ((a > 0) == (b > 0)).all()
    pairs = np.unique(np.stack([a[a > 0], b[a > 0]]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))  # a one-to-one map of ids


def _differing(whole: np.ndarray, tiled: np.ndarray) -> list[int]:
    """Whole-image cells that have no tiled cell with exactly their pixels."""
    pairs, counts = np.unique(np.stack([whole.ravel(), tiled.ravel()]), axis=1, return_counts=True)
    aw, at = np.bincount(whole.ravel()), np.bincount(tiled.ravel())
    same = {u for (u, v), c in zip(pairs.T, counts) if u and v and c == aw[u] == at[v]}
    return [u for u in range(1, whole.max() + 1) if aw[u] and u not in same]


def _seam_distance(grid, whole, cells) -> list[int]:
    hy, by, hx, bx = grid.canvas
    seams_y = np.arange(grid.tile - by, grid.height, grid.tile)
    seams_x = np.arange(grid.tile - bx, grid.width, grid.tile)
    out = []
    for sl, u in zip(ndi.find_objects(whole), range(1, whole.max() + 1)):
        if u in cells and sl is not None:
            d = [np.abs(np.arange(s.start, s.stop)[:, None] - seams[None]).min() for s, seams in zip(sl, (seams_y, seams_x))
                 if len(seams)]
            out.append(int(min(d)) if d else 10**9)
    return out


@pytest.mark.shared_data
def test_dsb_mosaic_tiled_classes_equal_the_whole_image(cell_checkpoint):
    """A 512x512 mosaic of real DSB nuclei: with windows on the pooling grid and a halo beyond
    the network's receptive field, the tiled class map is the whole image's, pixel for pixel,
    and the tiled cells have unique ids."""
    from pdeseg.data.phantoms.mosaic import Mosaic, dsb_tiles

    image = Mosaic(dsb_tiles(shared_data("dsb2018"), limit=24), 512, 512, seed=3).array()[None]
    p = Predictor.from_checkpoint(cell_checkpoint, OPTIONS)
    norm = normalize(image.astype(np.float32), p.spec.normalization).astype(np.float16).astype(np.float32)
    classes = predicted_classes(p.predict_logits(norm[..., None])[None], p.head)[0, ..., 0].numpy().astype(np.uint8)
    as_classes = predict_tiled(None, image, options=OPTIONS, predictor=p, tile=128, halo=128, band=16, instances=False,
                               progress=False)
    try:
        np.testing.assert_array_equal(as_classes.labels[:], classes)
    finally:
        as_classes.cleanup()
    cells = predict_tiled(None, image, options=OPTIONS, predictor=p, tile=256, halo=128, band=16, progress=False)
    try:
        labels = cells.labels[:]
        assert labels.max() == cells.objects == len(np.unique(labels)) - 1 > 0
    finally:
        cells.cleanup()


@pytest.mark.shared_data
def test_dsb_nuclei_cut_by_seams_are_joined():
    """Real DSB nuclei (a 512x768 mosaic, tiles of 128 so that many nuclei cross a seam),
    segmented by the pointwise network: the same foreground as the whole image, every nucleus
    found once (best IoU >= 0.5: none lost, split by a seam or merged), most of them pixel for
    pixel (the marker watershed breaks ties between touching nuclei by its flooding order, so a
    contact pixel can go to the other nucleus), ids unique."""
    from pdeseg.data.phantoms.mosaic import Mosaic, dsb_tiles

    image = Mosaic(dsb_tiles(shared_data("dsb2018"), limit=24), 512, 768, seed=4).array()[None].astype(np.float32)
    p = Predictor(_Threshold(), _SPEC, torch.device("cpu"), OPTIONS)
    whole, tiled, result = _whole_and_tiled(p, image, tile=128, halo=64, band=8)
    assert whole.max() > 100
    cut = sum(1 for u in range(1, whole.max() + 1) if len(np.unique(_tile_of(result.grid, whole == u))) > 1)
    assert cut >= 20
    np.testing.assert_array_equal(whole > 0, tiled > 0)
    best = _best_iou(whole, tiled)
    assert min(best.values()) >= 0.5 and tiled.max() == whole.max()
    assert len(_differing(whole, tiled)) <= 0.2 * whole.max()
    assert tiled.max() == result.objects == len(np.unique(tiled)) - 1


@pytest.mark.slow
def test_dask_local_cluster_gives_the_same_labels_as_one_process(cell_checkpoint, tmp_path):
    from pdeseg.data.phantoms.cells import make_cell_image

    rng = np.random.default_rng(5)
    image = np.concatenate([np.concatenate([make_cell_image("round", rng, (128, 128))[0] for _ in range(3)], 1)
                            for _ in range(2)], 0)[None].astype(np.float32)
    kw = dict(options=OPTIONS, tile=128, halo=64, band=16, progress=False, scratch_dir=tmp_path)
    one = predict_tiled(str(cell_checkpoint), image, **kw)
    two = predict_tiled(str(cell_checkpoint), image, dask_workers=2, **kw)
    try:
        assert two.runner.startswith("Dask (2 workers")
        assert one.objects > 10
        np.testing.assert_array_equal(one.labels[:], two.labels[:])
    finally:
        one.cleanup()
        two.cleanup()


def _best_iou(whole: np.ndarray, tiled: np.ndarray) -> dict[int, float]:
    """For each whole-image cell, the IoU of the tiled cell that overlaps it most."""
    pairs, counts = np.unique(np.stack([whole.ravel(), tiled.ravel()]), axis=1, return_counts=True)
    aw, at = np.bincount(whole.ravel()), np.bincount(tiled.ravel())
    best: dict[int, float] = {}
    for (u, v), c in zip(pairs.T, counts):
        if u and v:
            best[int(u)] = max(best.get(int(u), 0.0), c / (aw[u] + at[v] - c))
    return {u: best.get(u, 0.0) for u in range(1, whole.max() + 1) if aw[u]}


def test_with_options_changes_a_copy_and_leaves_the_original_untouched():
    p = Predictor(_Threshold(), _SPEC, torch.device("cpu"), OPTIONS.replace(skip_empty=True))
    q = p.with_options(skip_empty=False, batch_size=3, crop=True)
    assert (p.options.skip_empty, p.options.batch_size, p.spec.crop_nonzero) == (True, OPTIONS.batch_size, False)
    assert (q.options.skip_empty, q.options.batch_size, q.spec.crop_nonzero) == (False, 3, True)
    assert q.model is p.model and q.preprocessing.crop_nonzero and not p.preprocessing.crop_nonzero
    assert q.with_options(crop=None).spec.crop_nonzero is False  # back to the trained spec, not the copy's
    with pytest.raises(ConfigError, match="cannot change device"):
        p.with_options(device="cuda")


def test_tiled_runs_report_each_pass_to_a_callback_and_leave_the_predictor_as_given():
    """The runners tell a callback after each task (napari's progress), and the tiles are
    segmented without skip_empty on a copy: the predictor passed in keeps its options."""
    p = Predictor(_Threshold(), _SPEC, torch.device("cpu"), OPTIONS.replace(skip_empty=True))
    image = _blobs((160, 200), n=20)
    image[:, :, :70] = 0  # a tile of zeros: segmented as its part of the whole image, not skipped
    calls: list[tuple[str, int, int]] = []
    result = predict_tiled(None, image, options=OPTIONS, predictor=p, tile=64, halo=32, band=8, instances=True,
                           progress=False, callback=lambda *a: calls.append(a))
    try:
        n = len(result.grid.tiles())
        passes = {desc: [c for c in calls if c[0] == desc] for desc in dict.fromkeys(c[0] for c in calls)}
        assert list(passes) == ["image statistics", "tiles", "seams", "relabelling"]
        assert [c[1] for c in passes["tiles"]] == list(range(1, n + 1)) and {c[2] for c in passes["tiles"]} == {n}
    finally:
        result.cleanup()
    assert p.options.skip_empty is True


def test_formats_say_whether_they_have_cells():
    from pdeseg.data.formats import FORMATS

    assert {name for name, fmt in FORMATS.items() if fmt.has_cells} == {"dsb2018", "isbi_em", "cell_folder", "livecell"}
    assert FORMATS["drive"].object_metrics and not FORMATS["drive"].has_cells  # vessels: scored as objects, no cells


def test_napari_tiled_layers_get_progress_from_the_runner_callback(monkeypatch):
    """The napari widget's tiled path (no Qt needed) reports progress through predict_tiled's
    callback, with the model's post-processing left out on a copy."""
    from pdeseg.api import Segmenter
    from pdeseg.napari_plugin import _segment

    spec = _SPEC.model_copy(update={"format": "cell_folder"})
    p = Predictor(_Threshold(), spec, torch.device("cpu"), OPTIONS)
    monkeypatch.setattr(_segment, "TILED_ABOVE_PIXELS", 100 * 100)
    said: list[tuple[float, str]] = []
    out = _segment.segment_layer(Segmenter(p), _blobs((200, 240), n=30)[0], name="big", progress=lambda f, m: said.append((f, m)))
    assert out.instances and out.labels.shape == (200, 240) and out.labels.max() > 0 and "tiles" in out.note
    assert any(m.startswith("tiles: ") for _, m in said) and all(0 <= f <= 1 for f, _ in said)
