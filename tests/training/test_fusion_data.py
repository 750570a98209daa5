"""Classifier inputs without Ray: labels, class weights, biomarker standardisation, row decoding with a shared
geometric augmentation, graph arrays -> torch_geometric batches, device normalisation."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dr_ray.imaging import encode_lesion_maps, encode_png
from dr_ray.io import columns as C
from dr_ray.training.fusion_data import (
    NODE_INPUT_DIM,
    InputSpec,
    class_weights,
    collate,
    decode_rows,
    graph_data,
    labels_for_task,
    node_inputs,
    stats_normalisation,
    stats_vector,
    to_device,
)


def test_labels_for_task():
    assert labels_for_task([0, 1, 2, 3, 4], "referable").tolist() == [0, 0, 1, 1, 1]
    assert labels_for_task([0, 1, 2, 3, 4], "grade").tolist() == [0, 1, 2, 3, 4]
    for bad in ([5], [-1], [None], [1.5]):
        with pytest.raises(ValueError, match="ICDR grades"):
            labels_for_task(bad, "referable")
    with pytest.raises(ValueError, match="task"):
        labels_for_task([0], "binary")


def test_class_weights_inverse_frequency():
    # 3 x class 0, 1 x class 1: n / count / classes present
    np.testing.assert_allclose(class_weights([0, 0, 0, 1], 2), [4 / 3 / 2, 4 / 1 / 2])
    w = class_weights([0, 0, 1, 1, 1, 1], 5)  # grades absent from training weigh 1 (they still count in validation)
    np.testing.assert_allclose(w, [6 / 2 / 2, 6 / 4 / 2, 1, 1, 1])
    with pytest.raises(ValueError, match="0..1"):
        class_weights([0, 2], 2)
    with pytest.raises(ValueError, match="empty"):
        class_weights([], 2)


def test_stats_standardisation_and_missing_flags():
    vals = {"fractal_dimension": [1.2, 1.4, None, 1.6], "avr_knudtson": [None, None, None, 0.7]}
    mean, std = stats_normalisation(vals, ["fractal_dimension", "avr_knudtson"])
    assert mean[0] == pytest.approx(1.4) and std[0] == pytest.approx(np.std([1.2, 1.4, 1.6]))
    assert (mean[1], std[1]) == (pytest.approx(0.7), 1.0)  # a single measured value: only its flag carries
    spec = InputSpec(modalities=("image", "stats"), task="referable", image_size=32,
                     stats_features=("fractal_dimension", "avr_knudtson"), stats_mean=mean, stats_std=std)
    v = stats_vector(vals, spec)
    assert v.shape == (4, spec.stats_dim) == (4, 4)
    np.testing.assert_allclose(v[:, 0], [(1.2 - 1.4) / std[0], 0.0, 0.0, (1.6 - 1.4) / std[0]], atol=1e-6)
    np.testing.assert_array_equal(v[:, 2], [0, 0, 1, 0])  # missing fractal dimension of row 2
    np.testing.assert_array_equal(v[:, 3], [1, 1, 1, 0])
    with pytest.raises(ValueError, match="glcm_entropy"):
        stats_normalisation(vals, ["glcm_entropy"])


def _rows(n: int = 2, size: int = 64, map_size: int = 16):
    """Joined rows: an image with one bright pixel and lesion maps with one bright pixel at the same spot."""
    images, maps, xs, eis = [], [], [], []
    for i in range(n):
        img = np.full((size, size, 3), 40, np.uint8)
        img[4 * (i + 1):4 * (i + 1) + 4, 8:12] = 250  # a 4x4 block, top-left-ish
        images.append(encode_png(img))
        m = np.zeros((4, map_size, map_size), np.uint8)
        m[1, (i + 1):(i + 1) + 1, 2:3] = 255  # the same place at the map's scale (64 / 16 = 4)
        maps.append(encode_lesion_maps(m))
        # graph: 3 nodes in a path (2 edges, both directions)
        x = np.array([[3.0, 10.0, 4.0, 1, 2, 1], [2.0, np.nan, np.nan, 2, 1, 2], [1.0, 5.0, 2.0, -1, 1, 2]],
                     np.float32)
        ei = np.array([[0, 1, 1, 2], [1, 2, 0, 1]], np.int64)
        xs.append(x.ravel())
        eis.append(ei.ravel())
    return {C.IMAGE_ID: [f"img{i}" for i in range(n)], C.GRADE: [0, 3][:n] + [2] * max(0, n - 2),
            C.FOLD: [0] * n, C.IMAGE_PNG: images, C.LESION_MAPS_PNG: maps,
            C.LESION_MAP_KINDS: ["ma,he,ex,se"] * n, C.N_NODES: [3] * n, C.N_EDGES: [2] * n,
            C.GRAPH_X: xs, C.GRAPH_EDGE_INDEX: eis,
            "fractal_dimension": [1.3, None][:n] + [1.4] * max(0, n - 2)}


def _spec(**kw):
    base = dict(modalities=("image", "lesion", "graph", "stats"), task="referable", image_size=32, lesion_size=8,
                lesion_kinds=("ma", "he", "ex", "se"), stats_features=("fractal_dimension",), stats_mean=(1.3,),
                stats_std=(0.1,))
    base.update(kw)
    return InputSpec(**base)


def test_decode_rows_without_augmentation_resizes_exactly():
    rows = _rows()
    out = decode_rows(rows, _spec())
    assert out["image"].shape == (2, 32, 32, 3) and out["image"].dtype == np.uint8
    from dr_ray.imaging import decode_png

    ref = cv2.resize(decode_png(rows[C.IMAGE_PNG][1]), (32, 32), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(out["image"][1], ref)
    assert out["lesion"].shape == (2, 4, 8, 8)
    assert out["label"].tolist() == [0, 1]
    np.testing.assert_allclose(out["stats"], [[0.0, 0.0], [0.0, 1.0]])
    assert out["n_nodes"].tolist() == [3, 3] and out["graph_x"][0].shape == (18,)


def test_augmentation_moves_image_and_lesion_maps_together():
    rows = _rows(n=1, size=64, map_size=64)
    m = np.zeros((4, 64, 64), np.uint8)
    m[1, 4:8, 8:12] = 255  # exactly under the bright image block
    rows[C.LESION_MAPS_PNG] = [encode_lesion_maps(m)]
    spec = _spec(image_size=64, lesion_size=64)
    seen = set()
    for seed in range(12):
        out = decode_rows(rows, spec, augment=True, rng=np.random.default_rng(seed))
        bright = out["image"][0].min(axis=2) > 150
        lesion = out["lesion"][0, 1] > 128
        np.testing.assert_array_equal(bright, lesion)
        seen.add(tuple(np.argwhere(lesion)[0]))
    assert len(seen) >= 4  # rotations and flips really happen


def test_decode_errors_name_the_image():
    rows = _rows()
    rows[C.IMAGE_PNG][1] = b"not a png"
    with pytest.raises(ValueError, match="img1: image_png"):
        decode_rows(rows, _spec())
    rows = _rows()
    rows[C.LESION_MAP_KINDS][0] = "ma,he"
    with pytest.raises(ValueError, match="img0: lesion maps hold kinds 'ma,he'"):
        decode_rows(rows, _spec())


def test_node_inputs_encoding():
    x = np.array([[np.e - 1, 0.0, 8.0, 2, 4, 1], [0.0, np.nan, np.nan, -1, 1, 2]], np.float32)
    z = node_inputs(x)
    assert z.shape == (2, NODE_INPUT_DIM)
    np.testing.assert_allclose(z[0], [1.0, 0.0, 1.0, 0, 0, 1, 0, 1.0, 0, 1, 0], atol=1e-6)
    np.testing.assert_allclose(z[1], [0.0, 0.0, 0.0, 1, 0, 0, 0, 0.25, 0, 0, 1], atol=1e-6)
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        node_inputs(np.zeros((2, 5)))


def test_graph_data_checks_sizes():
    g = graph_data(np.zeros(18, np.float32), np.array([0, 1, 1, 0]), 3, 1)
    assert g.num_nodes == 3 and g.edge_index.tolist() == [[0, 1], [1, 0]]
    with pytest.raises(ValueError, match="a: graph arrays"):
        graph_data(np.zeros(12), np.array([0, 1, 1, 0]), 3, 1, image_id="a")
    with pytest.raises(ValueError, match="b: graph edge index outside"):
        graph_data(np.zeros(18), np.array([0, 5, 5, 0]), 3, 1, image_id="b")


def test_collate_batches_graphs_including_empty_ones_and_normalises_on_device():
    rows = _rows(n=3)
    rows[C.N_NODES][1], rows[C.N_EDGES][1] = 0, 0
    rows[C.GRAPH_X][1], rows[C.GRAPH_EDGE_INDEX][1] = np.zeros(0, np.float32), np.zeros(0, np.int64)
    batch = collate(decode_rows(rows, _spec()))
    g = batch["graph"]
    assert g.num_graphs == 3 and g.x.shape == (6, NODE_INPUT_DIM)
    assert g.batch.tolist() == [0, 0, 0, 2, 2, 2]  # the empty graph has no nodes but keeps its slot
    assert g.edge_index.max().item() == 5  # edges re-indexed into the batch
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (3, 3, 32, 32)
    d = to_device(batch, "cpu", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    ref = (batch["image"].float() / 255 - 0.5) / 0.25
    assert torch.allclose(d["image"], ref)
    assert torch.allclose(d["lesion"], batch["lesion"].float() / 255)


def test_input_spec_round_trip_and_checks():
    s = _spec()
    assert InputSpec.from_dict(s.to_dict()) == s
    assert s.stats_dim == 2 and s.num_classes == 2
    with pytest.raises(ValueError, match="lesion_kinds"):
        _spec(lesion_kinds=())
    with pytest.raises(ValueError, match="modalities"):
        _spec(modalities=("image", "text"))
    assert C.GRAPH_X in s.columns() and "fractal_dimension" in s.columns()


@pytest.mark.parametrize("image_input,column", [("segmented", C.VESSEL_PROB_PNG), ("canny", C.CANNY_PNG)])
def test_image_input_decodes_the_one_channel_map_as_the_image(image_input, column):
    """train.image_input: the vessel probability (graph paper 3.3) / Canny map becomes the 3-channel image; it
    moves with the lesion maps under augmentation but gets no brightness / contrast jitter."""
    rows = _rows(n=1, size=64, map_size=64)
    grey = np.zeros((64, 64), np.uint8)
    grey[4:8, 8:12] = 200  # under the RGB image's bright block, another value
    rows[column] = [encode_png(grey)]
    m = np.zeros((4, 64, 64), np.uint8)
    m[1, 4:8, 8:12] = 255
    rows[C.LESION_MAPS_PNG] = [encode_lesion_maps(m)]
    spec = _spec(image_size=64, lesion_size=64, image_input=image_input)
    assert column in spec.columns() and C.IMAGE_PNG in spec.columns()
    out = decode_rows(rows, spec)
    np.testing.assert_array_equal(out["image"][0], np.repeat(grey[:, :, None], 3, axis=2))
    for seed in range(6):
        aug = decode_rows(rows, spec, augment=True, rng=np.random.default_rng(seed))["image"][0]
        assert set(np.unique(aug)) == {0, 200}  # values untouched: no photometric jitter on a map
        np.testing.assert_array_equal(aug[:, :, 0] == 200, decode_rows(rows, spec, augment=True, rng=np.random.default_rng(
            seed))["lesion"][0, 1] > 128)
    rows[column] = [None]
    with pytest.raises(ValueError, match=f"img0: {column} is missing \\(train.image_input={image_input}\\)"):
        decode_rows(rows, spec)
    assert InputSpec.from_dict({k: v for k, v in spec.to_dict().items() if k != "image_input"}).image_input == "clahe"
    with pytest.raises(ValueError, match="image_input must be one of"):
        _spec(image_input="tophat")


def test_join_quarantines_rows_without_the_image_input_map():
    import pyarrow as pa

    from dr_ray.pipelines.fusion_data import fusion_schema
    from dr_ray.pipelines.fusion_join import mark_rows

    schema = fusion_schema([], "canny")
    assert schema.names[-1] == C.CANNY_PNG
    batch = pa.table({n: pa.nulls(2, schema.field(n).type) for n in schema.names})
    batch = batch.set_column(schema.get_field_index(C.IMAGE_ID), C.IMAGE_ID, pa.array(["a", "b"]))
    batch = batch.set_column(schema.get_field_index(C.GRADE), C.GRADE, pa.array([1, 2], schema.field(C.GRADE).type))
    batch = batch.set_column(schema.get_field_index(C.CANNY_PNG), C.CANNY_PNG, pa.array([b"png", None]))
    out = mark_rows(batch, stages=[], schema=schema, data_hash="h", stage_errors={}, stage_paths={},
                    image_column=C.CANNY_PNG)
    assert out.column(C.STATUS).to_pylist() == [C.STATUS_OK, C.STATUS_QUARANTINED]
    assert out.column(C.ERROR).to_pylist()[1] == ("b: no canny_png: the preprocess stage ran without "
                                                  "preprocess.extra_maps: [canny] (train.image_input=canny)")


# --- the joined index (dr_ray.pipelines.fusion_data): small columns in the driver, big ones fetched -------------

def _join(root, stages=("pseudo_labels", "vessels"), **kw):
    from dr_ray.config import load_config
    from dr_ray.pipelines.fusion_join import build_fusion_data

    return build_fusion_data(load_config(None, [f"output.dir={root}", "data.folds=2"]), stages)


def test_join_index_holds_no_bulky_column_and_fetches_the_stage_rows(tmp_path):
    import pyarrow.parquet as pq

    from dr_ray.pipelines.fusion_read import read_rows
    from dr_ray.testing.stages import read_stage, write_stage_outputs

    write_stage_outputs(tmp_path)
    data = _join(tmp_path)
    assert (data.rows_in, data.written, data.quarantined) == (16, 13, 3)
    index = pq.read_table(data.ok_dir)
    assert not {C.IMAGE_PNG, C.LESION_MAPS_PNG, C.GRAPH_X, C.GRAPH_EDGE_INDEX} & set(index.column_names)
    assert {"preprocess_file", "pseudo_labels_file", "vessels_file", "avr_knudtson"} <= set(index.column_names)
    bad = pq.read_table(Path(data.path) / "status=quarantined")
    assert bad.column("vessels_file").null_count == bad.num_rows == 3  # quarantined rows reference nothing
    cols = [C.IMAGE_ID, C.FOLD, C.IMAGE_PNG, C.LESION_MAPS_PNG, C.GRAPH_X, "fractal_dimension"]
    got = read_rows(data.path, cols).to_pydict()
    assert len(got[C.IMAGE_ID]) == 13
    pre, les, ves = (read_stage(tmp_path / s).to_pydict() for s in ("preprocess", "pseudo_labels", "vessels"))
    for i, image_id in enumerate(got[C.IMAGE_ID]):  # every fetched value is the stage's own value of that image
        assert got[C.IMAGE_PNG][i] == pre[C.IMAGE_PNG][pre[C.IMAGE_ID].index(image_id)]
        assert got[C.LESION_MAPS_PNG][i] == les[C.LESION_MAPS_PNG][les[C.IMAGE_ID].index(image_id)]
        assert got[C.GRAPH_X][i] == pytest.approx(ves[C.GRAPH_X][ves[C.IMAGE_ID].index(image_id)])
    some = read_rows(data.path, [C.IMAGE_ID, C.GRAPH_X], ids=["synthetic/3_left"]).to_pydict()
    assert some[C.IMAGE_ID] == ["synthetic/3_left"] and len(some[C.GRAPH_X][0]) == 6 * 6  # referable: 2 x 3 nodes


def test_join_dedupes_a_stage_written_twice_and_removes_superseded_builds(tmp_path):
    import shutil

    import pyarrow.parquet as pq

    from dr_ray.testing.stages import write_stage_outputs

    write_stage_outputs(tmp_path)
    first = _join(tmp_path)
    old_v1 = tmp_path / "fusion_data" / "0123456789abcdef"  # a full-copy build of the previous format
    old_v1.mkdir()
    (old_v1 / "_SUCCESS.json").write_text('{"format_version": 1}')
    ok = tmp_path / "vessels" / "status=ok"
    shutil.copy(ok / "part_000000.parquet", ok / "zz_again.parquet")  # the same 5 rows in a second shard
    second = _join(tmp_path)
    assert second.path != first.path and second.written == 13  # counts unchanged: duplicates kept once
    index = pq.read_table(second.ok_dir)
    assert index.num_rows == len(set(index.column(C.IMAGE_ID).to_pylist())) == 13
    assert not any(f.endswith("zz_again.parquet") for f in index.column("vessels_file").to_pylist())
    left = sorted(p.name for p in (tmp_path / "fusion_data").iterdir())
    assert left == [second.data_hash]  # the superseded build of the same inputs and the format-1 copy are gone
    other = _join(tmp_path, ("vessels",))  # another stage set is not superseded by this one
    assert sorted(p.name for p in (tmp_path / "fusion_data").iterdir()) == sorted([second.data_hash, other.data_hash])


def test_fetch_names_a_shard_that_changed_after_the_join(tmp_path):
    from dr_ray.pipelines.fusion_read import read_rows
    from dr_ray.testing.stages import write_stage_outputs

    write_stage_outputs(tmp_path)
    data = _join(tmp_path)
    (tmp_path / "vessels" / "status=ok" / "part_000000.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="part_000000.parquet: vessels shard referenced by the joined index"):
        read_rows(data.path, [C.IMAGE_ID, C.GRAPH_X])


@pytest.mark.ray
def test_rows_dataset_streams_the_fold_with_fetched_columns(ray_cluster, tmp_path):
    from dr_ray.pipelines.fusion_read import read_rows, rows_dataset
    from dr_ray.testing.stages import write_stage_outputs

    write_stage_outputs(tmp_path)
    data = _join(tmp_path)
    cols = [C.IMAGE_ID, C.FOLD, C.IMAGE_PNG, C.GRAPH_X]
    ref = read_rows(data.path, cols).to_pydict()
    rows = rows_dataset(data.path, cols, fold=1, exclude_fold=True, shuffle=True).take_all()
    assert sorted(r[C.IMAGE_ID] for r in rows) == sorted(i for i, f in zip(ref[C.IMAGE_ID], ref[C.FOLD]) if f != 1)
    for r in rows:
        j = ref[C.IMAGE_ID].index(r[C.IMAGE_ID])
        assert r[C.IMAGE_PNG] == ref[C.IMAGE_PNG][j] and list(r[C.GRAPH_X]) == pytest.approx(ref[C.GRAPH_X][j])
