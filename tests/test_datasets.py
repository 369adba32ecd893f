"""The dataset registry (``bevjax.data.datasets``), the layering of ``bevjax.data`` and the world's on-disk format.

World tests use the fake renderer (``fake_world``); the nuScenes and Argoverse 2 ones the real samples in
``../shared/data`` (skipped when absent).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from bevjax.data import datasets as D
from bevjax.data import sources as S
from bevjax.data import world_builder as wb
from bevjax.data.prepare import prepare_world
from bevjax.geometry.grid import BEVGrid
from bevjax.world import sample as world_sample

DATA_PACKAGE = Path(__file__).resolve().parents[1] / "bevjax" / "data"
GRID = BEVGrid((-25.0, 25.0, 1.0), (-25.0, 25.0, 1.0))
CAMERAS = ("CAM_FRONT", "CAM_BACK")


def _data_cfg(data_dir: str, dataset: str = "world", **extra) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.dataset, c.data_dir = dataset, data_dir
    c.domains, c.train_sequences, c.val_sequences = ("boston",), 1, 1
    c.world = ml_collections.ConfigDict(dict(seed=0, frames_per_sequence=4, lidar_beams=2, lidar_azimuths=64))
    c.nuscenes = ml_collections.ConfigDict(
        dict(dataroot="", config="keyframes", image_hw=(900, 1600), num_points=1000, num_sweeps=0, workers=0)
    )
    for key, value in extra.items():
        c[key] = value
    return c


# Layering ----------------------------------------------------------------------------------------------------


def _module_name(path: Path) -> str:
    parts = path.relative_to(DATA_PACKAGE.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """``{module: bevjax.data modules it imports}`` (at any depth of the file, lazy imports included)."""
    files = {_module_name(p): p for p in DATA_PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                # ``from bevjax.data import records`` imports the module bevjax.data.records.
                targets = [
                    f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in files
                ]
                targets = targets or [node.module]
            else:
                continue
            deps |= {t for t in targets if t in files and t != name}
        graph[name] = deps
    return graph


def test_data_modules_import_no_circle():
    graph = _import_graph()
    assert "bevjax.data.base_builder" in graph and "bevjax.data.datasets" in graph
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                raise AssertionError(f"import circle: {' -> '.join(stack + [node, dep])}")
            if dep not in state:
                visit(dep, stack + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_data_layers():
    """records <- builders <- sources <- datasets <- prepare: no module imports one of a higher layer."""
    graph = _import_graph()

    def reach(name):
        seen, todo = set(), [name]
        while todo:
            for dep in graph[todo.pop()]:
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return seen

    upper = {"bevjax.data.sources", "bevjax.data.datasets", "bevjax.data.prepare", "bevjax.data.preview"}
    assert not {d for d in reach("bevjax.data.records") if d.startswith("bevjax.data.")} - {"bevjax.data"}
    for builder in ("base_builder", "world_builder", "nuscenes.builder", "av2.builder"):
        assert not reach(f"bevjax.data.{builder}") & upper, builder
    assert not reach("bevjax.data.sources") & (upper - {"bevjax.data.sources"})
    assert "bevjax.data.prepare" not in reach("bevjax.data.datasets")


# The world's on-disk format ----------------------------------------------------------------------------------


def test_world_format_is_unchanged(tmp_path, fake_world):
    """Names, files, metadata and feature encodings of data prepared before the common base builder."""
    cfg = wb.make_builder_config("tiny", domains=("boston",), train_sequences=1, val_sequences=1)
    assert cfg.name == "custom_41c62866c5"  # the name data prepared earlier is stored under
    path = prepare_world(str(tmp_path), cfg, progress=False).data_path
    assert path == tmp_path / "bevjax_world" / cfg.name / "1.0.0"
    assert sorted(p.name for p in path.iterdir()) == [
        "bevjax_world-boston_train.array_record-00000-of-00001",
        "bevjax_world-boston_val.array_record-00000-of-00001",
        "dataset_info.json",
        "features.json",
        "metadata.json",
    ]
    metadata = json.loads((path / "metadata.json").read_text())
    assert metadata == {"world_builder_config": json.loads(json.dumps(cfg.to_json()))}
    features = json.loads((path / "features.json").read_text())["featuresDict"]["features"]
    spec = world_sample.example_spec_for(cfg.world)
    assert sorted(features) == sorted(spec)
    for key, (shape, dtype) in spec.items():
        tensor = features[key]["tensor"]
        encoding = "zlib" if shape else ("bytes" if np.dtype(dtype) == np.float64 else "none")
        assert (tensor["dtype"], tensor["encoding"]) == (np.dtype(dtype).name, encoding), key
        assert [int(d) for d in tensor["shape"].get("dimensions", [])] == list(shape), key
    info = json.loads((path / "dataset_info.json").read_text())
    assert info["disableShuffling"] and info["fileFormat"] == "array_record"
    # Reopened from its name alone; record i is render index i.
    source = S.open_world_split(str(tmp_path), cfg.name, "boston_val")
    want = world_sample.render_sample(cfg.world, "boston", "val", 3)
    np.testing.assert_array_equal(source[3]["bev_labels"], want["bev_labels"])
    assert source.frames_per_sequence == 4 and int(source[3]["frame_index"]) == 3


def test_world_renders_in_worker_processes(tmp_path):
    """``workers > 0`` renders in spawned processes (the real renderer) and stores records in render order."""
    cfg = wb.make_builder_config("tiny", domains=("boston_synthetic",), train_sequences=1, val_sequences=0)
    prepare_world(str(tmp_path), cfg, progress=False, workers=2)
    source = S.open_world_split(str(tmp_path), cfg, "boston_synthetic_train")
    for i in range(len(source)):
        want = world_sample.render_sample(cfg.world, "boston_synthetic", "train", i)
        for key in ("images", "bev_labels", "lidar_points", "frame_index"):
            np.testing.assert_array_equal(source[i][key], want[key], err_msg=f"{i} {key}")


# open_splits ---------------------------------------------------------------------------------------------------


def test_open_splits_world_prepares_on_first_use(tmp_path, fake_world, capsys):
    cfg = _data_cfg(str(tmp_path))
    sources = D.open_splits(cfg, GRID, ["boston_train", "boston_val"], cameras=CAMERAS, image_hw=(32, 88))
    assert "preparing bevjax_world/custom_" in capsys.readouterr().out
    train = sources["boston_train"]
    assert isinstance(train, S.WorldSplitSource) and len(train) == 4 and train.frames_per_sequence == 4
    assert train[0]["images"].shape == (2, 32, 88, 3)
    again = D.open_splits(cfg, GRID, ["boston_val"], cameras=CAMERAS, image_hw=(32, 88), progress=False)
    assert capsys.readouterr().out == "" and again["boston_val"].data_path == train.data_path
    entry, bcfg = D.builder_config(cfg, GRID, cameras=CAMERAS, image_hw=(32, 88))
    assert entry is D.DATASETS["world"] and bcfg.world.cameras == CAMERAS and bcfg.world.grid == GRID
    assert D.open_split("world", str(tmp_path), bcfg.name, "boston_val").data_path == train.data_path


def test_open_splits_deprecated_inputs_from_world_section(tmp_path, fake_world):
    cfg = _data_cfg(str(tmp_path))
    cfg.world.cameras, cfg.world.image_hw = CAMERAS, (32, 88)
    old = D.open_splits(cfg, GRID, ["boston_val"], progress=False)["boston_val"]
    assert old.config.world.cameras == CAMERAS and old.config.world.image_hw == (32, 88)
    with pytest.raises(ValueError, match="needs the model's cameras"):
        D.open_splits(_data_cfg(str(tmp_path)), GRID, ["boston_val"], image_hw=(32, 88))


def test_open_splits_errors(tmp_path):
    with pytest.raises(ValueError, match=r"dataset='kitti': choose from \['av2', 'nuscenes', 'world'\]"):
        D.open_splits(_data_cfg(str(tmp_path), "kitti"), GRID, ["train"], cameras=CAMERAS, image_hw=(8, 8))
    with pytest.raises(ValueError, match=r"'paris_train' is not a split .*\['boston_train', 'boston_val'\]"):
        D.open_splits(_data_cfg(str(tmp_path)), GRID, ["paris_train"], cameras=CAMERAS, image_hw=(8, 8))
    with pytest.raises(ValueError, match="'trian' is not a split of the nuscenes dataset"):
        D.open_splits(_data_cfg(str(tmp_path), "nuscenes"), GRID, ["trian"], cameras=CAMERAS)
    with pytest.raises(
        S.DatasetNotPreparedError,
        match=r"(?s)bevjax_nuscenes/custom_\w+ is not prepared in .*--config.data.nuscenes.dataroot=.*"
        r"python -c .*prepare_nuscenes",
    ):
        D.open_splits(_data_cfg(str(tmp_path), "nuscenes"), GRID, ["night_val"], cameras=CAMERAS)
    with pytest.raises(
        S.DatasetNotPreparedError, match=r"(?s)--config.data.av2.root=.*python -c .*prepare_av2"
    ):
        D.open_splits(_data_cfg(str(tmp_path), "av2"), GRID, ["val"])  # no av2 section: AV2_DEFAULTS


def test_open_splits_nuscenes_prepares_from_dataroot(nuscenes_tables, tmp_path, capsys):
    cfg = _data_cfg(str(tmp_path), "nuscenes")
    cfg.nuscenes.dataroot = str(nuscenes_tables.dataroot)
    sources = D.open_splits(cfg, GRID, ["train", "singapore_train"], cameras=CAMERAS, image_hw=(64, 192))
    assert "preparing bevjax_nuscenes/custom_" in capsys.readouterr().out
    record = sources["train"][0]
    assert record["images"].shape == (2, 900, 1600, 3)  # stored size; the augmentation makes the input size
    assert record["bev_labels"].shape[:2] == GRID.shape[:2] and record["lidar_points"].shape == (1000, 3)
    assert len(sources["singapore_train"]) == 1 and int(record["sequence_id"]) == 0
    _, bcfg = D.builder_config(cfg, GRID, cameras=CAMERAS)
    assert len(D.open_split("nuscenes", str(tmp_path), bcfg.name, "train")) == 1  # custom name from metadata


def test_open_splits_av2_prepares_from_root(av2_log, tmp_path, capsys):
    root = Path(av2_log.log_dir).parents[1]  # <root>/val/<log id>
    av2 = ml_collections.ConfigDict(
        dict(root=str(root), config="default", num_points=100_000, stride=1, workers=0)
    )
    cfg = _data_cfg(str(tmp_path), "av2", av2=av2)
    source = D.open_splits(cfg, GRID, ["val"], progress=False)["val"]
    assert "preparing bevjax_av2/custom_" in capsys.readouterr().out
    assert len(source) == 1 and source[0]["next_lidar_points"].shape == (100_000, 3)
    assert int(source[0]["sequence_id"]) == 0 and int(source[0]["frame_index"]) == 0
