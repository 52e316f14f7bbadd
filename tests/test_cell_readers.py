"""Microscopy readers: DSB 2018 (one mask per nucleus), ISBI 2012 EM, DRIVE, a generic image
folder; synthetic files written with PIL/tifffile, plus a few real images from ../shared/data."""

from __future__ import annotations

import csv
import pickle
import re
import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import shared_data
from pdeseg.data.formats import get_format
from pdeseg.data.readers.cells import CellDataError
from pdeseg.data.readers.dsb import assemble_nuclei, find_dsb_cases
from pdeseg.data.readers.image_sets import find_drive_cases, find_folder_cases, find_isbi_cases
from pdeseg.errors import DataError

ID = "a1b2c3"


def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array), mode).save(path)
    return path


def _disk_mask(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) <= radius**2).astype(np.uint8) * 255


def _write_dsb_image(stage, image_id=ID, shape=(20, 24), masks=None, rgba=True):
    """One DSB image folder: an RGBA image whose red channel is 10, green 20, blue 30, and
    the given masks (name -> 0/255 array); default: three separate rectangles."""
    folder = stage / image_id
    img = np.zeros((*shape, 4 if rgba else 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 20, 30
    if rgba:
        img[..., 3] = 255
    _png(folder / "images" / f"{image_id}.png", img)
    if masks is None:
        masks = {}
        for k, (r, c) in enumerate([(2, 2), (2, 14), (12, 6)]):
            m = np.zeros(shape, np.uint8)
            m[r : r + 4 + k, c : c + 5] = 255  # sizes 20, 25, 30
            masks[f"m{k}"] = m
    for name, m in masks.items():
        _png(folder / "masks" / f"{name}.png", m)
    return folder


def _write_tsv(path, rows, header=("image_id", "domain", "size", "nuclei")):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t")
        w.writerow(header)
        w.writerows(rows)
    return path


# --------------------------------------------------------------------------------------
# DSB 2018
# --------------------------------------------------------------------------------------


def test_dsb_masks_assemble_into_one_instance_image_each_nucleus_once(tmp_path):
    stage = tmp_path / "dsb2018" / "stage1_train"
    _write_dsb_image(stage)
    _write_dsb_image(stage, "b2", rgba=False)
    _write_tsv(tmp_path / "dsb2018" / "domains.tsv", [[ID, "fluorescence", "20x24", 3], ["b2", "brightfield", "", 3]])
    for root in (tmp_path / "dsb2018", stage):
        cases = find_dsb_cases(root)
        assert [c.case_id for c in cases] == [ID, "b2"] and [c.domain for c in cases] == ["fluorescence", "brightfield"]
    one = find_dsb_cases(stage / "b2", ("red", "grey"))  # one image folder: domain from the table two levels up
    assert [(c.case_id, c.domain) for c in one] == [("b2", "brightfield")]
    case = cases[0]
    assert len(case.label_files) == 3 and case.source_files()[0] == case.image
    loaded = pickle.loads(pickle.dumps(case)).load(("grey", "red", "blue"))  # the reader pickles
    assert loaded.image.shape == (3, 20, 24, 1) and loaded.image[:, 0, 0, 0].tolist() == [20.0, 10.0, 30.0]
    inst = loaded.instances[..., 0]
    assert loaded.instances.dtype == np.int32 and loaded.domain == "fluorescence"
    assert np.bincount(inst.ravel()).tolist()[1:] == [20, 25, 30]  # ids 1..3 in mask-file order
    assert inst[2, 2] == 1 and inst[2, 14] == 2 and inst[12, 6] == 3
    assert loaded.label.shape == (20, 24, 1) and set(np.unique(loaded.label)) == {0, 1}
    assert (loaded.label[..., 0] == (inst > 0)).all()
    assert find_dsb_cases(stage, domains=None)[0].targets == "semantic"


def test_dsb_overlapping_pixels_go_to_the_smaller_nucleus_and_are_counted(tmp_path):
    shape = (12, 12)
    big, small, same = (np.zeros(shape, np.uint8) for _ in range(3))
    big[1:9, 1:9] = 255  # 64 pixels
    small[6:11, 6:11] = 255  # 25 pixels, 9 shared with big
    same[0:5, 7:12] = 255  # 25 pixels, 8 shared with big (rows 1-4, columns 7-8), none with small
    folder = _write_dsb_image(tmp_path, shape=shape, masks={"a_big": big, "b_small": small, "c_same": same})
    files = sorted((folder / "masks").iterdir())
    inst, overlap = assemble_nuclei(files, shape)
    assert overlap == 9 + 8
    assert (inst[6:9, 6:9] == 2).all()  # big/small: the smaller wins
    assert (inst[1:5, 7:9] == 3).all()  # big/same: the smaller (25 < 64) wins
    assert np.bincount(inst.ravel()).tolist()[1:] == [64 - 9 - 8, 25, 25]
    # equal sizes: the first file wins
    twin = np.zeros(shape, np.uint8)
    twin[6:11, 5:10] = 255  # 25 pixels like small, overlapping it in 5x4
    folder2 = _write_dsb_image(tmp_path / "x", shape=shape, masks={"a": small, "b": twin})
    inst, overlap = assemble_nuclei(sorted((folder2 / "masks").iterdir()), shape)
    assert overlap == 20 and np.bincount(inst.ravel()).tolist()[1:] == [25, 5]
    # a duplicate mask leaves a nucleus without pixels: an error naming its file
    folder3 = _write_dsb_image(tmp_path / "y", shape=shape, masks={"a": small, "b": small})
    with pytest.raises(CellDataError, match=r"masks/b\.png: nucleus entirely covered"):
        assemble_nuclei(sorted((folder3 / "masks").iterdir()), shape)


def test_dsb_boundary_targets_separate_touching_nuclei(tmp_path):
    shape = (10, 14)
    left, right = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    left[2:8, 2:7] = 255
    right[2:8, 7:12] = 255  # touches left along columns 6 | 7
    _write_dsb_image(tmp_path, shape=shape, masks={"l": left, "r": right})
    (case,) = find_dsb_cases(tmp_path, targets="boundary")
    loaded = case.load()
    label, inst = loaded.label[..., 0], loaded.instances[..., 0]
    assert case.convention == "cells-boundary" and set(np.unique(label)) == {0, 1, 2}
    assert (label[3:7, 6] == 2).all() and (label[3:7, 7] == 2).all()  # the line between them
    assert (label[3:7, 3:6] == 1).all() and (label[3:7, 8:11] == 1).all()  # interiors
    assert set(np.unique(inst)) == {0, 1, 2} and (inst[2:8, 2:7] == 1).all() and (inst[2:8, 7:12] == 2).all()


def test_dsb_empty_mask_is_left_out_with_a_warning(tmp_path):
    shape = (8, 8)
    m = np.zeros(shape, np.uint8)
    m[1:4, 1:4] = 255
    _write_dsb_image(tmp_path, shape=shape, masks={"a": m, "b": np.zeros(shape, np.uint8), "c": np.roll(m, 4, 0)})
    (case,) = find_dsb_cases(tmp_path)
    with pytest.warns(UserWarning, match=r"masks/b\.png: empty nucleus mask"):
        inst = case.load().instances[..., 0]
    assert np.bincount(inst.ravel()).tolist() == [64 - 18, 9, 9]  # ids stay consecutive


def _break_dsb(kind, folder):
    masks = folder / "masks"
    if kind == "no images folder":
        for p in (folder / "images").iterdir():
            p.unlink()
        (folder / "images").rmdir()
    elif kind == "no image file":
        (folder / "images" / f"{ID}.png").unlink()
    elif kind == "id mismatch":
        (folder / "images" / f"{ID}.png").rename(folder / "images" / "other.png")
    elif kind == "no masks":
        for p in masks.iterdir():
            p.unlink()
        masks.rmdir()
    elif kind == "mask size":
        _png(masks / "m1.png", np.zeros((5, 5), np.uint8))
    elif kind == "non-binary mask":
        m = np.zeros((20, 24), np.uint8)
        m[0, :3] = [0, 128, 255]
        _png(masks / "m1.png", m)
    elif kind == "unreadable mask":
        (masks / "m1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")


@pytest.mark.parametrize("kind, match, at_load", [
    ("no images folder", rf"{ID}/images: missing images/ folder", False),
    ("no image file", rf"{ID}/images: no image file", False),
    ("id mismatch", r"images/other\.png: image id 'other' differs", False),
    ("no masks", rf"{ID}/masks: missing masks/ folder", False),
    ("mask size", r"masks/m1\.png: nucleus mask of size \(5, 5\)", True),
    ("non-binary mask", r"masks/m1\.png: a binary nucleus mask", True),
    ("unreadable mask", r"masks/m1\.png: cannot read image file", True),
])
def test_dsb_bad_files_name_the_file(tmp_path, kind, match, at_load):
    _write_dsb_image(tmp_path, "zz")  # a good neighbour
    _break_dsb(kind, _write_dsb_image(tmp_path))
    if at_load:
        case = find_dsb_cases(tmp_path)[0]
        with pytest.raises(CellDataError, match=match):
            case.load()
        return
    with pytest.raises(CellDataError, match=match):
        find_dsb_cases(tmp_path)
    skipped = {}
    assert [c.case_id for c in find_dsb_cases(tmp_path, skipped=skipped)] == ["zz"]
    assert list(skipped) == [ID] and re.search(match, skipped[ID])


def test_dsb_unlabelled_images_and_empty_root(tmp_path):
    folder = _write_dsb_image(tmp_path)
    _break_dsb("no masks", folder)
    (case,) = find_dsb_cases(tmp_path, require_label=False)
    assert case.objects is None and case.load().label is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(CellDataError, match=r"empty: no DSB 2018 images found \(expected stage1_train"):
        find_dsb_cases(tmp_path / "empty")
    with pytest.raises(CellDataError, match="data folder not found"):
        find_dsb_cases(tmp_path / "nowhere")
    with pytest.raises(DataError, match="targets must be one of"):
        find_dsb_cases(tmp_path, targets="instances")
    with pytest.raises(CellDataError, match="unknown channel"):
        find_dsb_cases(tmp_path, ("flair",))


def test_dsb_domains_table_problems(tmp_path):
    stage = tmp_path / "stage1_train"
    _write_dsb_image(stage)
    _write_dsb_image(stage, "b2")
    _write_tsv(tmp_path / "domains.tsv", [[ID, "fluorescence"], ["gone", "brightfield"]], ("image_id", "domain"))
    with pytest.warns(UserWarning) as record:
        cases = find_dsb_cases(stage)
    messages = " | ".join(str(w.message) for w in record)
    assert "1 image(s) not listed, given domain '': b2" in messages and "1 listed image id(s) not found: gone" in messages
    assert [c.domain for c in cases] == ["fluorescence", ""]
    _write_tsv(tmp_path / "other.tsv", [[1, "b2", "stained_color"]], ("nuclei", "image_id", "domain"))
    with pytest.warns(UserWarning, match="not listed"):
        assert [c.domain for c in find_dsb_cases(stage, domains=str(tmp_path / "other.tsv"))] == ["", "stained_color"]
    with pytest.warns(UserWarning, match="not listed"):  # a relative path is tried against the root
        find_dsb_cases(tmp_path, domains="other.tsv")
    _write_tsv(tmp_path / "bad.tsv", [[ID, "x"]], ("id", "kind"))
    with pytest.raises(CellDataError, match=r"bad\.tsv: the domains table needs .* image_id and domain"):
        find_dsb_cases(stage, domains=tmp_path / "bad.tsv")
    with pytest.raises(CellDataError, match=r"missing\.tsv not found"):
        find_dsb_cases(stage, domains=tmp_path / "missing.tsv")
    _write_tsv(tmp_path / "twice.tsv", [[ID, "x"], [ID, "y"]], ("image_id", "domain"))
    with pytest.raises(CellDataError, match=rf"twice\.tsv: {ID} is listed twice"):
        find_dsb_cases(stage, domains=tmp_path / "twice.tsv")
    (tmp_path / "domains.tsv").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [c.domain for c in find_dsb_cases(stage)] == ["", ""]  # no table: no domain, no warning


# --------------------------------------------------------------------------------------
# ISBI 2012 EM, DRIVE, image folders
# --------------------------------------------------------------------------------------


def _write_isbi(root, n=3, shape=(16, 16)):
    for k in range(n):
        _png(root / "images" / f"{k:02d}.png", np.full(shape, 40 + k, np.uint8))
        lab = np.full(shape, 255, np.uint8)
        lab[:, 7] = 0  # a membrane splits the slice into two cells
        lab[8, :7] = 0  # and the left one into two more
        _png(root / "labels" / f"{k:02d}.png", lab)


def test_isbi_cells_are_the_4_connected_interiors(tmp_path):
    _write_isbi(tmp_path)
    cases = find_isbi_cases(tmp_path)
    assert [c.case_id for c in cases] == ["00", "01", "02"] and {c.domain for c in cases} == {"em"}
    loaded = cases[1].load()
    assert loaded.image.shape == (1, 16, 16, 1) and loaded.image.max() == 41
    inst = loaded.instances[..., 0]
    assert inst.max() == 3 and sorted(np.bincount(inst.ravel())[1:].tolist()) == [49, 56, 16 * 8]
    assert (loaded.label[..., 0] == (inst > 0)).all() and loaded.label[8, 3, 0] == 0
    # a diagonal touch is not a connection (4-neighbourhood)
    lab = np.zeros((6, 6), np.uint8)
    lab[1, 1] = lab[2, 2] = 255
    _png(tmp_path / "labels" / "00.png", lab)
    _png(tmp_path / "images" / "00.png", np.zeros((6, 6), np.uint8))
    assert cases[0].load().instances.max() == 2


def test_isbi_layout_errors(tmp_path):
    _write_isbi(tmp_path)
    (tmp_path / "labels" / "01.png").unlink()
    _png(tmp_path / "labels" / "07.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(CellDataError, match=r"labels/07\.png: label without its image"):
        find_isbi_cases(tmp_path)
    skipped = {}
    assert [c.case_id for c in find_isbi_cases(tmp_path, skipped=skipped)] == ["00", "02"]
    assert set(skipped) == {"01", "07"} and "no label file" in skipped["01"]
    (tmp_path / "labels" / "07.png").unlink()
    assert [c.objects is None for c in find_isbi_cases(tmp_path, require_label=False)] == [False, True, False]
    _png(tmp_path / "images" / "02.tif", np.zeros((4, 4), np.uint8))
    with pytest.raises(CellDataError, match=r"images/02\.(tif|png): two image files named 02"):
        find_isbi_cases(tmp_path, require_label=False)
    with pytest.raises(CellDataError, match=r"images: missing images/ folder \(expected images/NN\.png"):
        find_isbi_cases(tmp_path / "labels")
    _png(tmp_path / "labels" / "00.png", np.arange(16, dtype=np.uint8).reshape(4, 4))
    (tmp_path / "images" / "02.tif").unlink()
    with pytest.raises(CellDataError, match=r"labels/00\.png: a binary label image"):
        find_isbi_cases(tmp_path, require_label=False)[0].load()


def _write_drive(root, numbers=(21, 22), shape=(12, 10)):
    for n in numbers:
        img = np.zeros((*shape, 3), np.uint8)
        img[..., 1] = n
        (root / "images").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(root / "images" / f"{n}_training.tif", img, photometric="rgb")
        ves = np.zeros(shape, np.uint8)
        ves[:, 4] = 255
        ves[6, :] = 255
        _png(root / "1st_manual" / f"{n}_manual1.gif", ves)
        fov = np.zeros(shape, np.uint8)
        fov[1:-1, 1:-1] = 255
        _png(root / "mask" / f"{n}_training_mask.gif", fov)


def test_drive_reads_vessels_as_semantic_with_the_field_of_view(tmp_path):
    _write_drive(tmp_path / "drive" / "training")
    for root in (tmp_path / "drive", tmp_path / "drive" / "training"):
        cases = find_drive_cases(root)
        assert [c.case_id for c in cases] == ["21_training", "22_training"]
    case = cases[1]
    assert case.domain == "fundus" and case.semantic_only and case.fov.name == "22_training_mask.gif"
    assert len(case.source_files()) == 3
    loaded = case.load(("red", "green", "blue"))
    assert loaded.image.shape == (3, 12, 10, 1) and loaded.image[1].max() == 22 and loaded.image[0].max() == 0
    assert loaded.instances is None and loaded.label[..., 0].sum() == 12 + 10 - 1
    assert loaded.valid.shape == (12, 10, 1) and loaded.valid.dtype == bool and loaded.valid.sum() == 10 * 8
    with pytest.raises(CellDataError, match=r"targets='boundary' does not apply to DRIVE"):
        find_drive_cases(tmp_path / "drive", targets="boundary")


def test_drive_layout_errors(tmp_path):
    _write_drive(tmp_path)
    (tmp_path / "mask" / "22_training_mask.gif").unlink()
    with pytest.raises(CellDataError, match=r"images/22_training\.tif: no field-of-view mask"):
        find_drive_cases(tmp_path)
    skipped = {}
    assert [c.case_id for c in find_drive_cases(tmp_path, skipped=skipped)] == ["21_training"]
    assert list(skipped) == ["22_training"]
    (tmp_path / "1st_manual" / "21_manual1.gif").unlink()
    with pytest.raises(CellDataError, match=r"21_training\.tif: no annotation .*21_manual1\.gif"):
        find_drive_cases(tmp_path)
    for p in (tmp_path / "mask").iterdir():
        p.unlink()
    (tmp_path / "mask").rmdir()  # without mask/, no case has a field of view
    cases = find_drive_cases(tmp_path, require_label=False)
    assert [(c.objects is None, c.fov) for c in cases] == [(True, None), (False, None)]
    assert cases[1].load().valid is None
    (tmp_path / "images" / "22_training.tif").write_bytes(b"II*\x00 truncated")
    with pytest.raises(CellDataError, match=r"images/22_training\.tif: (cannot read image file|no pixels)"):
        cases[1].load()
    _png(tmp_path / "images" / "odd.png", np.zeros((3, 3), np.uint8))
    with pytest.raises(CellDataError, match=r"images/odd\.png: unexpected image file name"):
        find_drive_cases(tmp_path, require_label=False)


@pytest.mark.filterwarnings("ignore:.*not listed, given domain")
def test_folder_binary_masks_and_label_images(tmp_path):
    shape = (10, 12)
    two = np.zeros(shape, np.uint8)
    two[1:4, 1:4] = 255
    two[6:9, 6:10] = 255
    labels = np.zeros(shape, np.uint16)
    labels[1:5, 1:5] = 7
    labels[1:5, 5:9] = 3  # touching objects with their own values
    labels[7:9, 1:3] = 12
    _png(tmp_path / "images" / "a.png", np.full(shape, 5, np.uint8))
    _png(tmp_path / "masks" / "a.png", two)
    tifffile.imwrite(tmp_path / "images" / "b.tif", np.full(shape, 9, np.uint16))
    tifffile.imwrite(tmp_path / "masks" / "b_mask.tif", labels)
    _png(tmp_path / "images" / "c.png", np.zeros((*shape, 3), np.uint8))
    _write_tsv(tmp_path / "domains.tsv", [["a.png", "HeLa"], ["b", "U2OS"]], ("image", "domain"))
    with pytest.warns(UserWarning, match="c not listed|not listed, given domain '': c"):
        cases = find_folder_cases(tmp_path, require_label=False)
    assert [(c.case_id, c.domain, c.label_files[0].name if c.label_files else None) for c in cases] == [
        ("a", "HeLa", "a.png"), ("b", "U2OS", "b_mask.tif"), ("c", "", None)]
    a, b = (c.load() for c in cases[:2])
    assert a.instances.max() == 2 and np.bincount(a.instances.ravel()).tolist()[1:] == [9, 12]  # components
    assert b.image.max() == 9 and np.bincount(b.instances.ravel()).tolist()[1:] == [16, 16, 4]  # values 3, 7, 12
    assert b.instances[2, 6, 0] == 1 and b.instances[2, 2, 0] == 2 and b.instances[7, 1, 0] == 3
    boundary = find_folder_cases(tmp_path, require_label=False, targets="boundary")[1].load().label[..., 0]
    assert boundary[2, 4] == 2 and boundary[2, 5] == 2 and boundary[2, 2] == 1  # the line between 7 and 3
    # a two-valued label image read as instances is one object, read as binary its components
    (c,) = [c for c in find_folder_cases(tmp_path, require_label=False, label_kind="instances") if c.case_id == "a"]
    assert c.load().instances.max() == 1
    with pytest.raises(CellDataError, match=r"masks/b_mask\.tif: a binary label image"):
        find_folder_cases(tmp_path, require_label=False, label_kind="binary")[1].load()
    with pytest.raises(CellDataError, match="label_kind must be one of"):
        find_folder_cases(tmp_path, label_kind="colour")


def test_folder_layout_errors(tmp_path):
    shape = (6, 6)
    for stem in ("a", "b", "c"):
        _png(tmp_path / "images" / f"{stem}.png", np.zeros(shape, np.uint8))
    _png(tmp_path / "masks" / "a.png", np.zeros(shape, np.uint8))
    _png(tmp_path / "masks" / "a_mask.tif", np.zeros(shape, np.uint8))  # two masks for a
    _png(tmp_path / "masks" / "b_mask.png", np.zeros((4, 4), np.uint8))  # a mask of another size
    _png(tmp_path / "masks" / "d.png", np.zeros(shape, np.uint8))  # a mask without image
    _png(tmp_path / "masks" / "c.jpg", np.zeros((*shape, 3), np.uint8))  # lossy
    with pytest.raises(CellDataError, match=r"masks/a_mask\.tif: a second mask for image a\.png"):
        find_folder_cases(tmp_path)
    skipped = {}
    (case,) = find_folder_cases(tmp_path, skipped=skipped)
    assert case.case_id == "b" and set(skipped) == {"a", "c", "d"}
    assert "without its image" in skipped["d"] and "losslessly" in skipped["c"]
    with pytest.raises(CellDataError, match=r"masks/b_mask\.png: labels of size \(4, 4\) for an image of size \(6, 6\)"):
        case.load()
    (tmp_path / "masks" / "c.jpg").unlink()
    skipped = {}
    find_folder_cases(tmp_path, skipped=skipped)
    assert "no mask" in skipped["c"] and "images/c.png" in skipped["c"]
    with pytest.raises(CellDataError, match=r"masks: missing images/ folder|images: missing images/ folder"):
        find_folder_cases(tmp_path / "masks")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(CellDataError, match=r"empty: no image-folder images found \(expected images/"):
        find_folder_cases(tmp_path / "empty")
    (tmp_path / "images" / "b.png").write_bytes(b"not an image")
    with pytest.raises(CellDataError, match=r"images/b\.png: cannot read image file"):
        case.load()


def test_registered_formats_find_the_cases(tmp_path):
    _write_dsb_image(tmp_path / "dsb" / "stage1_train")
    _write_isbi(tmp_path / "em", n=2)
    _write_drive(tmp_path / "drive", numbers=(3,))
    _png(tmp_path / "folder" / "images" / "x.png", np.zeros((4, 4), np.uint8))
    _png(tmp_path / "folder" / "masks" / "x_mask.png", np.zeros((4, 4), np.uint8))
    expect = {"dsb2018": ("dsb", [ID], {"targets": "boundary", "domains": None}),
              "isbi_em": ("em", ["00", "01"], {}), "drive": ("drive", ["3_training"], {}),
              "cell_folder": ("folder", ["x"], {"label_kind": "instances"})}
    for name, (sub, ids, options) in expect.items():
        fmt = get_format(name)
        fmt.check_read_options(options)
        skipped = {}
        cases = fmt.find_cases(tmp_path / sub, fmt.default_modalities, True, skipped, **options)
        assert [c.case_id for c in cases] == ids and not skipped, name
        assert cases[0].load(fmt.default_modalities).image.shape[0] == len(fmt.default_modalities)
    assert cases[0].objects.kind == "instances"
    assert get_format("dsb2018").dataset_info(tmp_path / "dsb", {"targets": "boundary"}).num_classes == 3


# --------------------------------------------------------------------------------------
# real samples (../shared/data)
# --------------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_real_dsb2018_domains_and_nuclei_counts():
    root = shared_data("dsb2018")
    cases = find_dsb_cases(root)
    assert len(cases) == 223 and len({c.case_id for c in cases}) == 223
    counts = {d: sum(c.domain == d for c in cases) for d in ("fluorescence", "stained_color", "brightfield_gray")}
    assert counts == {"fluorescence": 100, "stained_color": 107, "brightfield_gray": 16}  # the names domains.tsv uses
    with open(root / "domains.tsv", newline="") as fh:
        table = {r["image_id"]: r for r in csv.DictReader(fh, delimiter="\t")}
    by_domain = {}
    for c in cases:
        by_domain.setdefault(c.domain, c)  # the first image of each domain
    for case in by_domain.values():
        if case.domain == "brightfield_gray":
            continue  # 1024x1024: the smaller two suffice for the runtime budget
        loaded = case.load(("grey",))
        row = table[case.case_id]
        h, w = (int(v) for v in row["size"].split("x"))
        assert loaded.image.shape == (1, h, w, 1)
        inst = loaded.instances[..., 0]
        assert inst.max() == int(row["nuclei"]) == len(case.label_files)
        assert (np.bincount(inst.ravel())[1:] > 0).all()  # each nucleus once, none lost
    # one of the two images whose fixed masks overlap (by 2 pixels here): every nucleus keeps an id
    (case,) = [c for c in cases if c.case_id.startswith("0a7d30b252359a10")]
    inst, overlap = assemble_nuclei(case.label_files, (256, 256))
    assert overlap == 2 and inst.max() == 28 == int(table[case.case_id]["nuclei"])
    assert (np.bincount(inst.ravel())[1:] > 0).all()


@pytest.mark.shared_data
def test_real_isbi_and_drive():
    cases = find_isbi_cases(shared_data("isbi2012_em"))
    assert len(cases) == 24 and [c.case_id for c in cases][:2] == ["00", "01"]
    loaded = cases[0].load()
    assert loaded.image.shape == (1, 512, 512, 1) and loaded.instances.shape == (512, 512, 1)
    assert loaded.instances.max() > 50 and 0.5 < loaded.label.mean() < 0.95
    drive = find_drive_cases(shared_data("drive"))
    assert len(drive) == 20 and all(c.fov is not None and c.semantic_only for c in drive)
    loaded = drive[0].load(("red", "green", "blue"))
    assert drive[0].case_id == "21_training" and loaded.image.shape == (3, 584, 565, 1)
    assert loaded.valid.shape == (584, 565, 1) and 0.6 < loaded.valid.mean() < 0.8
    assert 0.05 < loaded.label[loaded.valid].mean() < 0.2 and loaded.instances is None
