"""LIVECell-style COCO reader (pdeseg.data.readers.livecell) and the synthetic cell phantom
(pdeseg.data.phantoms.cells): every data set here is written by the tests."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile
from pycocotools import mask as mask_utils

from pdeseg.data.formats import get_format
from pdeseg.data.phantoms.cells import (CELL_TYPES, compressed_rle, make_cell_image, phantom_case, polygons,
                                        uncompressed_rle, write_cell_phantom)
from pdeseg.data.readers.cells import CellDataError, read_image_file
from pdeseg.data.readers.livecell import decode_instances, default_annotation_files, find_livecell_cases

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools, numpy 2

H, W = 40, 50


def _write_image(root: Path, name: str, shape=(H, W), sub: str = "images") -> Path:
    path = root / sub / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.full(shape, 100, np.uint8))
    return path


def _coco(images, annotations) -> dict:
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "cell"}]}


def _write_json(path: Path, doc) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _image(image_id=1, name="A172_Phase_A7_1_00d00h00m_1.tif", **extra) -> dict:
    return {"id": image_id, "file_name": name, "height": H, "width": W, **extra}


def _ann(ann_id, seg, image_id=1) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "segmentation": seg, "iscrowd": 0}


def _masks():
    """Three separate masks: a rectangle, a disc, an L shape."""
    yy, xx = np.mgrid[0:H, 0:W]
    rect = (yy >= 3) & (yy < 12) & (xx >= 4) & (xx < 20)
    disc = (yy - 25) ** 2 + (xx - 12) ** 2 <= 36
    ell = ((yy >= 20) & (yy < 35) & (xx >= 30) & (xx < 34)) | ((yy >= 31) & (yy < 35) & (xx >= 30) & (xx < 45))
    return rect, disc, ell


# ---------------------------------------------------------------------------------------- decoding


def test_uncompressed_rle_writer_matches_pycocotools():
    rect, disc, ell = _masks()
    for m in (rect, disc, ell, np.ones((H, W), bool), np.zeros((H, W), bool)):
        rle = mask_utils.frPyObjects(uncompressed_rle(m), H, W)
        assert rle["counts"] == mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"]
        assert np.array_equal(mask_utils.decode(rle).astype(bool), m)


def test_polygons_rle_compressed_and_uncompressed_round_trip(tmp_path):
    rect, disc, ell = _masks()
    _write_image(tmp_path, "A172_Phase_A7_1_00d00h00m_1.tif")
    rect_polygon = [[4, 3, 20, 3, 20, 12, 4, 12]]  # pixels x 4..19, y 3..11 exactly
    anns = [_ann(10, rect_polygon), _ann(11, compressed_rle(disc)), _ann(12, uncompressed_rle(ell))]
    _write_json(tmp_path / "annotations" / "cells.json", _coco([_image()], anns))
    (case,) = find_livecell_cases(tmp_path)
    assert case.case_id == "A172_Phase_A7_1_00d00h00m_1" and case.domain == "A172"
    loaded = case.load(("grey",))
    inst = loaded.instances[..., 0]
    assert inst.dtype == np.int32 and inst.shape == (H, W)
    assert np.array_equal(inst == 1, rect) and np.array_equal(inst == 2, disc) and np.array_equal(inst == 3, ell)
    assert inst.max() == 3 and np.array_equal(loaded.label[..., 0], (inst > 0).astype(np.uint8))
    # a polygon from a mask outline rasterises back to (nearly) the same mask
    back = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons(disc), H, W))).astype(bool)
    assert (back & disc).sum() / (back | disc).sum() >= 0.9
    # several polygon parts make one cell
    two = [[2, 2, 6, 2, 6, 6, 2, 6], [30, 30, 34, 30, 34, 34, 30, 34]]
    out = decode_instances([(1, two)], (H, W))
    assert out.max() == 1 and out.sum() == 32


def _two(big_first: bool):
    yy, xx = np.mgrid[0:H, 0:W]
    big = (yy >= 5) & (yy < 35) & (xx >= 5) & (xx < 45)
    small = (yy >= 10) & (yy < 16) & (xx >= 10) & (xx < 16)
    pairs = [(1, compressed_rle(big)), (2, compressed_rle(small))]
    return (pairs if big_first else pairs[::-1]), big, small


def test_overlap_rules():
    pairs, big, small = _two(big_first=True)
    smallest = decode_instances(pairs, (H, W), "smallest")
    assert np.array_equal(smallest == 2, small) and np.array_equal(smallest == 1, big & ~small)
    first = decode_instances(pairs, (H, W), "first")  # the big cell, first, covers the small one: dropped
    assert np.array_equal(first == 1, big) and first.max() == 1
    reversed_pairs, _, _ = _two(big_first=False)
    first = decode_instances(reversed_pairs, (H, W), "first")
    assert np.array_equal(first == 1, small) and np.array_equal(first == 2, big & ~small)
    # equal areas: the earlier annotation wins under both rules
    a = np.zeros((H, W), bool)
    a[0:10, 0:10] = True
    b = np.roll(a, 5, axis=1)
    for rule in ("smallest", "first"):
        out = decode_instances([(1, compressed_rle(a)), (2, compressed_rle(b))], (H, W), rule)
        assert np.array_equal(out == 1, a) and np.array_equal(out == 2, b & ~a)


def test_overlap_option_reaches_the_reader_and_the_cache_key(tmp_path):
    pairs, big, small = _two(big_first=True)
    _write_image(tmp_path, "X_1.tif")
    _write_json(tmp_path / "a.json", _coco([_image(name="X_1.tif")], [_ann(i, s) for i, s in pairs]))
    (s,) = find_livecell_cases(tmp_path, overlap="smallest")
    (f,) = find_livecell_cases(tmp_path, overlap="first")
    assert s.load().instances.max() == 2 and f.load().instances.max() == 1
    assert s.convention != f.convention
    with pytest.raises(CellDataError, match="overlap"):
        find_livecell_cases(tmp_path, overlap="largest")


# ---------------------------------------------------------------------------------------- bad files


def _good(root: Path) -> dict:
    _write_image(root, "A172_1.tif")
    return _coco([_image(name="A172_1.tif")], [_ann(7, [[1, 1, 8, 1, 8, 8]])])


def _bad(kind: str, root: Path):
    """Write a broken set; return (annotation file, text the message must hold besides the file)."""
    ann = root / "annotations" / "bad.json"
    doc = _good(root)
    if kind == "not_json":
        _write_json(ann, "{'images': [")
        return ann, "not a JSON"
    if kind in ("no_images", "no_annotations"):
        del doc[kind[3:]]
        _write_json(ann, doc)
        return ann, kind[3:]
    if kind == "unknown_image":
        doc["annotations"][0]["image_id"] = 99
        _write_json(ann, doc)
        return ann, "annotation 7"
    if kind in ("form_string", "form_flat", "form_number"):
        doc["annotations"][0]["segmentation"] = {"form_string": "abc", "form_flat": [1, 1, 8, 1, 8, 8],
                                                 "form_number": 3}[kind]
        _write_json(ann, doc)
        return ann, "annotation 7"
    if kind == "short_polygon":
        doc["annotations"][0]["segmentation"] = [[1, 1, 8, 1]]
        _write_json(ann, doc)
        return ann, "annotation 7"
    if kind in ("rle_size", "rle_size_uncompressed"):
        m = np.zeros((H + 1, W), bool)
        m[2:5, 2:5] = True
        doc["annotations"][0]["segmentation"] = compressed_rle(m) if kind == "rle_size" else uncompressed_rle(m)
        _write_json(ann, doc)
        return ann, "annotation 7"
    if kind == "rle_counts":
        doc["annotations"][0]["segmentation"] = {"size": [H, W], "counts": [5, 3, 2]}
        _write_json(ann, doc)
        return ann, "annotation 7"
    if kind == "missing_image":
        (root / "images" / "A172_1.tif").unlink()
        _write_json(ann, doc)
        return ann, "image 1"
    if kind == "duplicate_id_in_file":
        _write_image(root, "A172_2.tif")
        doc["images"].append(_image(name="A172_2.tif"))
        _write_json(ann, doc)
        return ann, "image id 1"
    if kind == "duplicate_id_across":
        _write_image(root, "A172_2.tif")
        _write_json(root / "annotations" / "a_first.json", doc)
        _write_json(ann, _coco([_image(name="A172_2.tif")], []))
        return ann, "image id 1"
    if kind == "duplicate_name_across":
        _write_json(root / "annotations" / "a_first.json", doc)
        _write_json(ann, _coco([_image(image_id=2, name="A172_1.tif")], []))
        return ann, "image 2"
    raise AssertionError(kind)


BAD_KINDS = ["not_json", "no_images", "no_annotations", "unknown_image", "form_string", "form_flat", "form_number",
             "short_polygon", "rle_size", "rle_size_uncompressed", "rle_counts", "missing_image",
             "duplicate_id_in_file", "duplicate_name_across"]


def test_image_ids_are_per_file(tmp_path):
    """Ids link annotations to images within one file; two files may both number from 1."""
    _bad("duplicate_id_across", tmp_path)
    cases = find_livecell_cases(tmp_path)
    assert sorted(c.case_id for c in cases) == ["A172_1", "A172_2"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_files_raise_naming_the_file(tmp_path, kind):
    ann, detail = _bad(kind, tmp_path)
    with pytest.raises(CellDataError) as err:
        find_livecell_cases(tmp_path)
    assert str(ann) in str(err.value) and detail in str(err.value), str(err.value)


def test_compressed_counts_that_do_not_decode_raise_on_load(tmp_path):
    doc = _good(tmp_path)
    doc["annotations"][0]["segmentation"] = {"size": [H, W], "counts": "=33000O999"}
    ann = _write_json(tmp_path / "a.json", doc)
    (case,) = find_livecell_cases(tmp_path)
    with pytest.raises(CellDataError, match="annotation 7") as err:
        case.load()
    assert str(ann) in str(err.value)


def test_image_problems_are_skipped_with_a_skipped_dict(tmp_path):
    doc = _good(tmp_path)
    _write_image(tmp_path, "A172_2.tif")
    doc["images"] += [_image(2, "A172_2.tif"), _image(3, "A172_3.tif")]  # A172_3.tif has no file
    doc["annotations"].append(_ann(8, [[1, 1, 2, 1]], image_id=2))  # 2 points
    _write_json(tmp_path / "a.json", doc)
    skipped: dict[str, str] = {}
    cases = find_livecell_cases(tmp_path, skipped=skipped)
    assert [c.case_id for c in cases] == ["A172_1"]
    assert set(skipped) == {"A172_2", "A172_3"} and "annotation 8" in skipped["A172_2"]
    with pytest.raises(CellDataError, match="annotation 8"):
        find_livecell_cases(tmp_path)


def test_missing_root_annotation_and_image_size_mismatch(tmp_path):
    with pytest.raises(CellDataError, match="not found"):
        find_livecell_cases(tmp_path / "nowhere")
    _write_image(tmp_path, "B_1.tif")
    with pytest.raises(CellDataError, match="no COCO annotation file"):
        find_livecell_cases(tmp_path)
    with pytest.raises(CellDataError, match="annotation file not found"):
        find_livecell_cases(tmp_path, annotations="annotations/none.json")
    _write_json(tmp_path / "a.json", _coco([_image(name="B_1.tif", height=H + 2)], []))
    (case,) = find_livecell_cases(tmp_path)
    with pytest.raises(CellDataError, match="a.json"):
        case.load()


# ---------------------------------------------------------------------------------------- layouts


def test_official_layout_dict_annotations_subfolders_and_prefix_domains(tmp_path):
    """LIVECell's own files key ``annotations`` by id; test images may sit in per-type folders;
    without ``cell_type`` the domain is the upper-cased file-name prefix."""
    rect, disc, _ = _masks()
    _write_image(tmp_path, "SkBr3_Phase_E3_1_00d00h00m_1.tif", sub="images/livecell_train_val_images")
    _write_image(tmp_path, "BV2_Phase_D4_2_00d04h00m_3.tif", sub="images/livecell_test_images/BV2")
    _write_image(tmp_path, "MCF7_Phase_H4_1_02d00h00m_2.tif", sub="elsewhere/deep")
    train = _coco([_image(5, "SkBr3_Phase_E3_1_00d00h00m_1.tif"), _image(6, "MCF7_Phase_H4_1_02d00h00m_2.tif")], [])
    train["annotations"] = {"100": _ann(100, compressed_rle(rect), 5), "101": _ann(101, compressed_rle(disc), 6)}
    test = _coco([_image(9, "BV2_Phase_D4_2_00d04h00m_3.tif")], [_ann(102, uncompressed_rle(disc), 9)])
    _write_json(tmp_path / "annotations" / "LIVECell" / "livecell_coco_train.json", train)
    _write_json(tmp_path / "annotations" / "LIVECell" / "livecell_coco_test.json", test)
    _write_json(tmp_path / "annotations" / "LIVECell_single_cells" / "bv2" / "test.json", test)  # not read by default
    cases = {c.case_id: c for c in find_livecell_cases(tmp_path)}
    assert {c.domain for c in cases.values()} == {"SKBR3", "MCF7", "BV2"}
    assert cases["BV2_Phase_D4_2_00d04h00m_3"].image.parent.name == "BV2"
    assert cases["MCF7_Phase_H4_1_02d00h00m_2"].image.parent.name == "deep"
    assert np.array_equal(cases["SkBr3_Phase_E3_1_00d00h00m_1"].load().instances[..., 0] == 1, rect)
    assert np.array_equal(cases["BV2_Phase_D4_2_00d04h00m_3"].load().instances[..., 0] == 1, disc)
    # the per-type file alone, as a relative path
    (only,) = find_livecell_cases(tmp_path, annotations="annotations/LIVECell_single_cells/bv2/test.json")
    assert only.domain == "BV2"


def test_unlabelled_images_without_annotations(tmp_path):
    _write_image(tmp_path, "A172_1.tif")
    _write_image(tmp_path, "Huh7_2.tif", sub="images/sub")
    cases = find_livecell_cases(tmp_path, require_label=False)
    assert [(c.case_id, c.domain, c.objects) for c in cases] == [("A172_1", "A172", None), ("Huh7_2", "HUH7", None)]
    loaded = cases[0].load(("grey",), with_label=True)
    assert loaded.label is None and loaded.image.shape == (1, H, W, 1)


# ---------------------------------------------------------------------------------------- phantom


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return write_cell_phantom(tmp_path_factory.mktemp("cells"), n_per_type=5, seed=3)


def test_phantom_layout_and_default_rule(phantom):
    names = sorted(p.name for p in (phantom / "annotations").iterdir())
    assert names == sorted(f"{p}_{s}.json" for p in ("livecell_coco", *CELL_TYPES) for s in ("train", "val", "test"))
    assert [p.name for p in default_annotation_files(phantom)] == [f"livecell_coco_{s}.json" for s in
                                                                    ("test", "train", "val")]
    cases = find_livecell_cases(phantom)
    assert len(cases) == 15 and len({c.case_id for c in cases}) == 15
    assert {c.domain for c in cases} == {"ROUND", "ELONGATED", "CLUSTERED"}
    assert all(c.case_id.split("_")[0] == c.domain for c in cases)
    doc = json.loads((phantom / "annotations" / "livecell_coco_train.json").read_text())
    forms = {("poly" if isinstance(a["segmentation"], list) else
              "rle_list" if isinstance(a["segmentation"]["counts"], list) else "rle_str") for a in doc["annotations"]}
    assert forms == {"poly", "rle_list", "rle_str"}
    a = doc["annotations"][0]
    assert set(a) >= {"id", "image_id", "segmentation", "area", "bbox", "iscrowd", "category_id"}
    assert all("cell_type" in im for im in doc["images"])
    split_ids = [{im["id"] for im in json.loads((phantom / "annotations" / f"livecell_coco_{s}.json").read_text())
                  ["images"]} for s in ("train", "val", "test")]
    assert [len(s) for s in split_ids] == [9, 3, 3]
    assert not (split_ids[0] & split_ids[1]) and not (split_ids[1] & split_ids[2]) and not (split_ids[0] & split_ids[2])


def test_phantom_round_trip_per_type(phantom):
    for cell_type in CELL_TYPES:
        files = [f"annotations/{cell_type}_{s}.json" for s in ("train", "val", "test")]
        cases = find_livecell_cases(phantom, annotations=files)
        assert len(cases) == 5 and {c.domain for c in cases} == {cell_type.upper()}
        for case in cases:
            index = int(case.case_id.rsplit("_", 1)[1])
            image, instances = phantom_case(cell_type, index, seed=3)
            assert np.array_equal(read_image_file(case.image), image)
            got = case.load(("grey",)).instances[..., 0]
            doc = json.loads(case.label_files[0].read_text())
            anns = [a for a in doc["annotations"] if a["image_id"] == case.extra["image_id"]]
            assert got.max() == instances.max() == len(anns) > 0
            for label, ann in enumerate(anns, 1):
                truth, mine = instances == label, got == label
                assert ann["area"] == truth.sum()
                if isinstance(ann["segmentation"], dict):  # RLE: exact
                    assert np.array_equal(mine, truth)
                else:  # polygon: up to rasterisation (and the overlap rule at touching borders)
                    assert (mine & truth).sum() / (mine | truth).sum() >= 0.9, (case.case_id, label)


def test_phantom_rle_only_round_trips_exactly(tmp_path):
    root = write_cell_phantom(tmp_path, n_per_type=2, seed=1, size=(64, 96), segmentation="rle")
    cases = find_livecell_cases(root)
    assert len(cases) == 6
    for case in cases:
        cell_type, index = case.case_id.lower().rsplit("_", 1)
        _, instances = phantom_case(cell_type, int(index), seed=1, size=(64, 96))
        assert np.array_equal(case.load().instances[..., 0], instances)


def test_phantom_is_deterministic_and_types_differ():
    from skimage.measure import regionprops

    a = make_cell_image("clustered", np.random.default_rng(4))
    b = make_cell_image("clustered", np.random.default_rng(4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    stats = {}
    for cell_type in CELL_TYPES:
        props = [p for i in range(6) for p in regionprops(phantom_case(cell_type, i, seed=0)[1])]
        stats[cell_type] = (np.mean([p.area for p in props]), np.mean([p.eccentricity for p in props]))
        image, instances = phantom_case(cell_type, 0, seed=0)
        assert image.dtype == np.uint8 and instances.dtype == np.int32 and instances.max() >= 3
        # phase contrast: dark cells, a bright halo just outside them
        from scipy import ndimage

        ring = ndimage.binary_dilation(instances > 0, iterations=2) & (instances == 0)
        far = ~ndimage.binary_dilation(instances > 0, iterations=8)
        assert image[instances > 0].mean() + 30 < image[far].mean() < image[ring].mean() - 10
    (round_area, round_ecc), (long_area, long_ecc), (clu_area, clu_ecc) = (stats[t] for t in CELL_TYPES)
    assert long_ecc > round_ecc + 0.4 and long_ecc > clu_ecc + 0.2
    assert clu_area > 1.5 * round_area and long_area > 1.3 * round_area
    # touching cells only in clustered images; separate objects keep a gap elsewhere
    for cell_type, touching in (("round", False), ("elongated", False), ("clustered", True)):
        inst = phantom_case(cell_type, 1, seed=0)[1]
        contact = ((inst[1:] != inst[:-1]) & (inst[1:] > 0) & (inst[:-1] > 0)).any() or \
                  ((inst[:, 1:] != inst[:, :-1]) & (inst[:, 1:] > 0) & (inst[:, :-1] > 0)).any()
        assert contact == touching


def test_livecell_format_options_relative_path_and_list(phantom):
    fmt = get_format("livecell")
    fmt.check_read_options({"annotations": ["annotations/round_test.json"], "overlap": "first"})
    one = fmt.find_cases(phantom, ("grey",), True, None, annotations="annotations/round_test.json")
    assert [c.domain for c in one] == ["ROUND"]
    files = ["annotations/round_test.json", str(phantom / "annotations" / "elongated_test.json")]  # relative, absolute
    both = fmt.find_cases(phantom, ("grey",), True, None, targets="semantic", overlap="first", annotations=files)
    assert sorted(c.domain for c in both) == ["ELONGATED", "ROUND"]
    assert len(fmt.find_cases(phantom, ("grey",), True, None, annotations="annotations")) == 15  # a folder: split files
    assert len(fmt.find_cases(phantom, ("grey",), True, None, annotations=[], targets=None, overlap=None)) == 15
    case = pickle.loads(pickle.dumps(both[0]))
    loaded = case.load(("grey",))
    assert loaded.domain == case.domain and loaded.label.shape == (128, 128, 1) and loaded.instances.max() > 0
    assert fmt.dataset_info(phantom, {"targets": "semantic"}).class_names == ("background", "cell")


def test_phantom_boundary_targets_separate_touching_cells(phantom):
    """With ``targets: boundary`` touching clustered cells get a boundary line between them, and
    the watershed of the true classes gives the cells back."""
    from pdeseg.metrics.instances import instances_from_boundary_classes, instances_from_mask, match_instances

    (case,) = find_livecell_cases(phantom, targets="boundary", annotations="annotations/clustered_test.json")
    loaded = case.load(("grey",))
    classes, inst = loaded.label[..., 0], loaded.instances[..., 0]
    assert set(np.unique(classes)) == {0, 1, 2}
    n_components = instances_from_mask(inst > 0).max()
    assert n_components < inst.max()  # some cells touch: one foreground component holds several
    back = instances_from_boundary_classes(classes)
    assert back.max() == inst.max()
    iou = match_instances(back, inst)
    assert iou.max(axis=0).min() >= 0.9  # every true cell is found again
