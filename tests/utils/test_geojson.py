"""GeoJSON for QuPath: valid FeatureCollections whose rectangles read back into the same boxes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retinadet.errors import DataError
from retinadet.utils.colors import class_colors
from retinadet.utils.geojson import read_feature_collection, to_feature_collection

NAMES = ["RBC", "WBC", "Platelets"]
coord = st.floats(0, 5000, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(coord, coord, st.floats(1, 300), st.floats(1, 300), st.floats(0, 1), st.integers(0, 2)), max_size=20))
def test_round_trip(tmp_path_factory, rows):
    boxes = [[x, y, x + w, y + h] for x, y, w, h, _, _ in rows]
    scores = [s for *_, s, _ in rows]
    labels = [k for *_, k in rows]
    collection = to_feature_collection(boxes, scores, labels, NAMES)
    path = tmp_path_factory.mktemp("g") / "image.geojson"
    path.write_text(json.dumps(collection))
    back = read_feature_collection(path)
    assert len(back) == len(rows)
    for b, box, s, k in zip(back, boxes, scores, labels):
        assert b["box"] == pytest.approx(box, abs=1e-3) and b["class_name"] == NAMES[k] and b["score"] == pytest.approx(s, abs=1e-5)


def test_features_are_what_qupath_reads():
    f = to_feature_collection([[10, 20, 40, 60]], [0.9], [1], NAMES)
    assert f["type"] == "FeatureCollection"
    feature = f["features"][0]
    ring = feature["geometry"]["coordinates"][0]
    assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
    assert ring[0] == ring[-1] and len(ring) == 5  # a closed linear ring
    props = feature["properties"]
    assert props["objectType"] == "detection"
    assert props["classification"] == {"name": "WBC", "color": list(class_colors(3)[1])}
    assert props["measurements"] == {"score": 0.9}


def test_unreadable_geojson_names_the_file(tmp_path):
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.geojson: not a readable GeoJSON"):
        read_feature_collection(bad)
    bad.write_text(json.dumps({"type": "FeatureCollection", "features": [{"geometry": {}}]}))
    with pytest.raises(DataError, match="feature 0"):
        read_feature_collection(bad)
