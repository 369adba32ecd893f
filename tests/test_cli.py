"""The command-line programs at first contact: bad command lines end in one line, progress reads well in logs."""

import os
import subprocess
import sys

import pytest
from ml_collections import ConfigDict

from bevjax import cli
from bevjax.progress import LineProgress, format_duration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, env=None, cwd=ROOT):
    env = dict(os.environ, JAX_PLATFORMS="cpu", BEVJAX_HUGE_PAGES="0", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _one_error_line(result, status):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == status, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and len(lines) == 2, result.stderr[-2000:]
    assert lines[0].startswith("error: ") and lines[1] == cli.DEBUG_HINT
    return lines[0]


def test_misspelled_config_override_is_one_line(tmp_path):
    result = _run(
        "bevjax.train", "--config", "configs/lss.py:tiny", "--workdir", str(tmp_path), "--config.optim.lrr=1"
    )
    line = _one_error_line(result, 2)
    assert line.startswith(
        "error: --config.optim.lrr=1: optim has no field 'lrr' (did you mean 'lr'?); its fields:"
    )
    assert " lr, " in line and "\\n" not in line and "\\'" not in line  # not the escaped KeyError repr
    assert not os.listdir(tmp_path)  # nothing written
    debug = _run(
        "bevjax.train",
        "--config",
        "configs/lss.py:tiny",
        "--workdir",
        str(tmp_path),
        "--config.optim.lrr=1",
        "--debug",
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_config_file_and_variant_errors_name_them(tmp_path):
    result = _run("bevjax.evaluate", "--config", "configs/lsss.py", "--workdir", str(tmp_path))
    line = _one_error_line(result, 2)
    assert "--config configs/lsss.py: no such file 'configs/lsss.py'" in line and "configs/lss.py" in line
    result = _run("bevjax.train", "--config", "configs/lss.py:tny", "--workdir", str(tmp_path))
    line = _one_error_line(result, 2)
    assert line.endswith("ValueError: configs/lss.py:tny: choose from default, tiny, full, nuscenes")


def test_override_message_from_a_real_config_error():
    config = ConfigDict({"optim": {"lr": 1.0, "weight_decay": 0.0}})
    with pytest.raises(AttributeError) as info:
        config.optim.lrr  # noqa: B018 (what ml_collections' override parser does)
    message = cli.config_override_message(info.value, ["p", "--config.optim.lrr=2"])
    assert message.startswith("--config.optim.lrr=2: optim has no field 'lrr'")
    assert cli.config_override_message(info.value, ["p"]) is None  # no override to blame
    assert cli.missing_config_file(["p", "--config=configs/lss.py:tiny"]) is None


def test_line_progress_prints_plain_lines_with_eta():
    now = [0.0]
    lines = []

    class Stream:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

    bar = LineProgress("bevjax_world/tiny", "record", every=10.0, stream=Stream(), clock=lambda: now[0])
    bar.reset(total=40)
    for _ in range(40):
        now[0] += 1.0
        bar.update()
    bar.close()
    bar.close()
    text = "".join(lines)
    assert "\r" not in text and "\x1b" not in text
    shown = [line for line in text.splitlines() if line]
    assert len(shown) == 5  # at 10, 20, 30, 40 s and at close
    assert shown[0] == "bevjax_world/tiny: 10/40 records (25%) | 1 records/s | elapsed 00:10 | ETA 00:30"
    assert shown[-1].startswith("bevjax_world/tiny: 40/40 records (100%)")
    assert format_duration(3725) == "1:02:05" and format_duration(float("nan")) == "--:--"


def test_prepare_output_is_plain_and_says_what_it_does(tmp_path):
    """Piped to a log: no carriage returns or escape codes, no TFDS 'Downloading' or missing-info warnings."""
    args = (
        "bevjax.data.prepare",
        "world",
        "--config",
        "tiny",
        "--domains",
        "boston",
        "--train_sequences",
        "1",
        "--val_sequences",
        "1",
        "--data_dir",
        str(tmp_path),
    )
    result = _run(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout + result.stderr
    for noise in ("\r", "\x1b", "Downloading", "dataset_info.json", "WARNING"):
        assert noise not in text, (noise, text)
    assert text.count("preparing bevjax_world/custom_") == 1 and "prepared bevjax_world/custom_" in text
    assert "records (100%)" in result.stderr
    again = _run(*args)
    assert "already prepared" in again.stdout and "WARNING" not in again.stderr
    missing = _run(
        "bevjax.data.prepare", "av2", "--dataroot", str(tmp_path / "nowhere"), "--data_dir", str(tmp_path)
    )
    line = _one_error_line(missing, 1)
    assert f"the raw data folder {tmp_path / 'nowhere'} does not exist" in line
