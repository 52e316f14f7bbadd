"""The element-by-element COCO json reader (pdeseg.data.readers.coco_json): the same content as
json.load, compacted; the json module's errors for broken files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pdeseg.data.readers.coco_json import compact_segmentation, load_coco
from pdeseg.data.readers.livecell import read_coco


def _doc(annotations_first: bool = False, keyed: bool = False) -> dict:
    images = [{"id": 7, "file_name": "A172_x_1.tif", "height": 20, "width": 30}]
    anns = [{"id": 1, "image_id": 7, "category_id": 1, "segmentation": [[1, 1, 10.5, 1, 10.5, 9.25, 1, 9]],
             "bbox": [1, 1, 9, 8], "area": 70.0, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "segmentation": {"size": [20, 30], "counts": [5, 3, 592]}}]
    if keyed:
        anns = {str(a["id"]): a for a in anns}
    parts = [("annotations", anns), ("images", images)] if annotations_first else [("images", images), ("annotations", anns)]
    return {"info": {"v": 1}, **dict(parts), "categories": [{"id": 1, "name": "cell"}]}


@pytest.mark.parametrize("annotations_first", [False, True])
@pytest.mark.parametrize("keyed", [False, True])
def test_same_content_as_json_load_compacted(tmp_path, annotations_first, keyed):
    doc = _doc(annotations_first, keyed)
    path = tmp_path / "a.json"
    path.write_text(json.dumps(doc, indent=1 if keyed else None))
    got = load_coco(path)
    assert got["images"] == doc["images"] and got["categories"] == doc["categories"] and got["info"] == doc["info"]
    first, second = got["annotations"]
    assert set(first) == {"id", "image_id", "category_id", "segmentation"}  # bbox, area, iscrowd dropped
    assert isinstance(first["segmentation"], tuple) and first["segmentation"][0].dtype == np.float64
    assert first["segmentation"][0].tolist() == [1, 1, 10.5, 1, 10.5, 9.25, 1, 9]
    assert second["segmentation"] == {"size": [20, 30], "counts": [5, 3, 592]}  # RLE as parsed
    # and the reader gives the same per-image pairs as from the plain parse
    images, per_image = read_coco(path)
    assert [a for a, _ in per_image[7]] == [1, 2]


def test_malformed_polygons_are_kept_for_the_readers_messages():
    for bad in ([[1, 2, "x", 4, 5, 6]], [[1, 2, True, 4, 5, 6]], [[[1, 2], [3, 4], [5, 6]]], [], {"counts": "a"}):
        assert compact_segmentation(bad) is bad


@pytest.mark.parametrize("text", ['{"images": [], "annotations": [{"id": 1}', '{"images": [] "annotations": []}',
                                  '{"annotations": [1, 2,]}', '{"images": []} trailing', '{1: 2}'])
def test_broken_json_raises_the_json_error(tmp_path, text):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(json.JSONDecodeError):
        load_coco(path)


def test_not_an_object_is_returned_as_parsed(tmp_path):
    (tmp_path / "a.json").write_text(" [1, 2] ")
    assert load_coco(tmp_path / "a.json") == [1, 2]
    (tmp_path / "b.json").write_text("{}")
    assert load_coco(tmp_path / "b.json") == {}
