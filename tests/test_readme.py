"""The README's commands exist: console scripts, config files, and the flags it gives each program."""

import ast
import importlib.util
import os
import re
import shlex
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()
SCRIPTS = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]["scripts"]


def test_console_scripts_are_declared_and_resolve():
    assert set(SCRIPTS) == {"bevjax-train", "bevjax-evaluate", "bevjax-prepare"}
    for name, target in SCRIPTS.items():  # read, not imported: train and evaluate both define --config
        module, func = target.split(":")
        tree = ast.parse(open(importlib.util.find_spec(module).origin).read())
        assert func in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, target
        assert name in README, f"{name} is not in the README"


def test_config_files_named_in_the_readme_exist():
    named = set(re.findall(r"--config (configs/[\w/]+\.py)", README))
    assert named, "the README names no config"
    for path in named:
        assert os.path.isfile(os.path.join(ROOT, path)), path


def test_prepare_commands_in_the_readme_parse():
    from bevjax.data.prepare import build_parser

    commands = re.findall(r"python -m bevjax\.data\.prepare ([^`]*)`", README)
    assert len(commands) >= 2
    for command in commands:
        args = build_parser().parse_args(shlex.split(command))  # exits (fails the test) on an unknown flag
        assert args.dataset in ("world", "nuscenes", "av2")


def test_evaluate_has_one_name_per_folder():
    """``--dataroot``: a raw dataset; ``--data_dir``: prepared data (as in prepare)."""
    source = open(importlib.util.find_spec("bevjax.evaluate").origin).read()
    defined = {
        call.args[0].value: call.args[2].value
        for call in ast.walk(ast.parse(source))
        if isinstance(call, ast.Call)
        and getattr(call.func, "attr", "").startswith("DEFINE_")
        and len(call.args) >= 3
        and isinstance(call.args[2], ast.Constant)
    }
    assert "raw" in defined["dataroot"] and "prepared" in defined["data_dir"]
    assert "--dataset nuscenes --dataroot" in README
