"""A damaged raw file (a truncated camera JPEG, a truncated Argoverse 2 feather) fails where it is read, in one line
naming the file and what to do, and leaves nothing that later looks prepared (issue 10, items 4 and 5).

The damaged datasets are copies of the real samples of ``../shared/data`` in a temp dir: the unchanged files are
symbolic links, the damaged one a truncated copy. Skipped when the shared data is absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bevjax.data.av2 import AV2Log
from bevjax.data.av2.reader import DamagedFileError as AV2DamagedFileError
from bevjax.data.nuscenes import DamagedFileError
from bevjax.data.nuscenes import builder as nb
from bevjax.data.nuscenes.source import NuScenesSource
from bevjax.data.prepare import main as prepare_main
from bevjax.data.prepare import prepare_nuscenes
from bevjax.geometry.grid import BEVGrid
from tests.conftest import AV2_LOG_DIR, NUSCENES_ROOT

ROOT = Path(__file__).resolve().parents[1]


def _link_tree(src: Path, dst: Path, damaged: Path, size: int) -> Path:
    """``dst`` mirroring ``src`` with links, except ``damaged`` (relative to ``src``): a copy cut to ``size``
    bytes. Folders on the way to it are real folders; the others are links. Returns the damaged copy."""
    dst.mkdir(parents=True)
    first, *rest = damaged.parts
    for entry in sorted(src.iterdir()):
        if entry.name != first:
            (dst / entry.name).symlink_to(entry.resolve())
    if rest:
        return _link_tree(src / first, dst / first, Path(*rest), size)
    copy = dst / first
    shutil.copyfile(src / first, copy)
    os.chmod(copy, 0o644)
    os.truncate(copy, size)
    return copy


# nuScenes: a truncated camera JPEG ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def damaged_nuscenes(nuscenes_tables, tmp_path_factory):
    """``(dataroot, relative path, sample token)`` of a copy of the real dataroot whose CAM_FRONT JPEG is cut to
    5000 bytes (``truncate -s 5000``)."""
    token = next(iter(nuscenes_tables.tables["sample"]))
    relative = Path(nuscenes_tables.sample_data(token, "CAM_FRONT")["filename"])
    root = tmp_path_factory.mktemp("nusc_damaged") / "nuscenes"
    _link_tree(NUSCENES_ROOT, root, relative, 5000)
    return root, relative, token


def _assert_names_the_jpeg(message: str, root: Path, relative: Path, token: str) -> None:
    assert "\n" not in message
    assert f"damaged nuScenes file {relative} (camera CAM_FRONT of sample {token})" in message
    assert "image file is truncated" in message
    assert str(root / relative) in message  # absolute
    assert "download it again or restore it" in message


def test_prepare_names_a_truncated_jpeg_and_writes_nothing(damaged_nuscenes, tmp_path):
    root, relative, token = damaged_nuscenes
    with pytest.raises(DamagedFileError) as info:
        prepare_nuscenes(str(root), str(tmp_path), "keyframes", progress=False)
    assert isinstance(info.value, OSError)  # the command line reports it in one line
    _assert_names_the_jpeg(str(info.value), root, relative, token)
    assert not nb.BevjaxNuScenes(data_dir=str(tmp_path), config="keyframes").is_prepared()
    assert not list(tmp_path.rglob("dataset_info.json")) and not list(tmp_path.rglob("*.array_record*"))


def test_reading_a_raw_dataroot_names_a_truncated_jpeg(damaged_nuscenes):
    """What ``python -m bevjax.data.preview nuscenes`` and ``python -m bevjax.evaluate --dataset nuscenes`` read."""
    root, relative, token = damaged_nuscenes
    source = NuScenesSource(root, BEVGrid())
    with pytest.raises(DamagedFileError) as info:
        source[0]
    _assert_names_the_jpeg(str(info.value), root, relative, token)


def test_prepare_command_line_one_line_then_prepares_once_restored(damaged_nuscenes, tmp_path):
    root, relative, token = damaged_nuscenes
    data_dir = tmp_path / "data"
    cmd = [sys.executable, "-m", "bevjax.data.prepare", "nuscenes", "--dataroot", str(root)]
    cmd += ["--data_dir", str(data_dir), "--no_progress"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith("error: DamagedFileError: damaged nuScenes file")
    _assert_names_the_jpeg(errors[0], root, relative, token)

    # Restored, the same command prepares it (the failed run left nothing that passes for prepared).
    restored = tmp_path / "restored"
    shutil.copytree(root, restored, symlinks=True)
    (restored / relative).unlink()
    (restored / relative).symlink_to((NUSCENES_ROOT / relative).resolve())
    prepare_nuscenes(str(restored), str(data_dir), "keyframes", progress=False)
    assert nb.BevjaxNuScenes(data_dir=str(data_dir), config="keyframes").is_prepared()


# Argoverse 2: a truncated feather file -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def first_sweep(av2_log) -> str:
    return f"{int(av2_log.lidar_timestamps()[0])}.feather"


@pytest.mark.parametrize(
    "damaged",
    ["sweep", "annotations.feather", "city_SE3_egovehicle.feather", "flow_labels.feather", "ego_motion.npz"],
)
def test_av2_truncated_file_is_named(av2_log, first_sweep, tmp_path, damaged):
    relative = Path("sensors", "lidar", first_sweep) if damaged == "sweep" else Path(damaged)
    log_dir = tmp_path / "val" / AV2_LOG_DIR.name
    copy = _link_tree(AV2_LOG_DIR, log_dir, relative, 100 if damaged.endswith(".npz") else 1000)
    log = AV2Log(log_dir)
    t0 = int(first_sweep.split(".")[0])
    read = {
        "sweep": lambda: log.load_sweep(t0),
        "annotations.feather": lambda: log.cuboids(t0),
        "city_SE3_egovehicle.feather": lambda: log.city_from_ego(t0),
        "flow_labels.feather": log.load_flow_labels,
        "ego_motion.npz": log.load_ego_motion,
    }[damaged]
    with pytest.raises(AV2DamagedFileError) as info:
        read()
    message = str(info.value)
    assert isinstance(info.value, OSError) and "\n" not in message
    assert message.startswith(f"damaged Argoverse 2 file {copy}: ")
    assert "download its log again or restore the file" in message
    if damaged != "ego_motion.npz":
        assert "pyarrow cannot read it (ArrowInvalid: Not an Arrow file; the file has 1000 bytes)" in message


def test_av2_prepare_command_line_one_line(av2_log, first_sweep, tmp_path, capsys):
    copy = _link_tree(
        AV2_LOG_DIR,
        tmp_path / "sensor" / "val" / AV2_LOG_DIR.name,
        Path("sensors", "lidar", first_sweep),
        1000,
    )
    data_dir = tmp_path / "data"
    argv = ["av2", "--dataroot", str(tmp_path / "sensor"), "--data_dir", str(data_dir), "--no_progress"]
    with pytest.raises(SystemExit) as info:
        prepare_main(argv)
    assert info.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: DamagedFileError: damaged Argoverse 2 file {copy}: "
    )
    assert not list(data_dir.rglob("dataset_info.json")) and not list(data_dir.rglob("*.array_record*"))
