"""Tests of the official nuScenes scene splits and the domain-adaptation splits (no JAX computation).

Known memberships are read off the devkit's ``nuscenes/utils/splits.py`` (nuscenes-devkit 1.2.0).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bevjax.data.nuscenes.splits import (
    DOMAIN_SPLIT_PAIRS,
    DOMAINS,
    OFFICIAL_SPLITS,
    scene_domains,
    split_scenes,
)

DATAROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "nuscenes"
VERSION = "v1.0-test"


def test_counts():
    counts = {name: len(scenes) for name, scenes in OFFICIAL_SPLITS.items()}
    assert counts == {"train": 700, "val": 150, "test": 150, "mini_train": 8, "mini_val": 2}
    for scenes in OFFICIAL_SPLITS.values():
        assert len(set(scenes)) == len(scenes)
        assert list(scenes) == sorted(scenes)


def test_names_are_scene_numbers():
    pattern = re.compile(r"scene-\d{4}")
    for scenes in OFFICIAL_SPLITS.values():
        for name in scenes:
            assert pattern.fullmatch(name), name


def test_train_val_test_disjoint():
    train, val, test = (set(OFFICIAL_SPLITS[k]) for k in ("train", "val", "test"))
    assert not train & val
    assert not train & test
    assert not val & test
    assert len(train | val | test) == 1000


def test_mini_splits_come_from_trainval():
    train, val = set(OFFICIAL_SPLITS["train"]), set(OFFICIAL_SPLITS["val"])
    mini_train, mini_val = set(OFFICIAL_SPLITS["mini_train"]), set(OFFICIAL_SPLITS["mini_val"])
    assert mini_train <= train | val
    assert mini_val <= val
    # As in the devkit: two mini_train scenes are official val scenes, so mini_train is not within train.
    assert mini_train - train == {"scene-0553", "scene-0796"}
    assert not mini_train & mini_val


@pytest.mark.parametrize(
    "name, splits",
    [
        ("scene-0001", {"train"}),
        ("scene-0003", {"val"}),
        ("scene-0061", {"train", "mini_train"}),
        ("scene-0077", {"test"}),
        ("scene-0103", {"val", "mini_val"}),
        ("scene-0553", {"val", "mini_train"}),
        ("scene-0916", {"val", "mini_val"}),
        ("scene-1043", {"test"}),
        ("scene-1110", {"train"}),
        ("scene-0037", set()),  # unused number
    ],
)
def test_known_memberships(name, splits):
    assert {k for k, scenes in OFFICIAL_SPLITS.items() if name in scenes} == splits


def test_domain_pairs():
    assert DOMAIN_SPLIT_PAIRS == (("boston", "singapore"), ("day", "night"), ("dry", "rain"))
    assert DOMAINS == ("boston", "singapore", "day", "night", "dry", "rain")


def _scene(description: str, name: str = "scene-0001") -> dict:
    return {"name": name, "description": description}


@pytest.mark.parametrize(
    "location, city",
    [
        ("boston-seaport", "boston"),
        ("singapore-onenorth", "singapore"),
        ("singapore-queenstown", "singapore"),
        ("singapore-hollandvillage", "singapore"),
    ],
)
def test_scene_domains_city(location, city):
    assert scene_domains(_scene("Parked cars, peds"), {"location": location}) == {
        "city": city,
        "light": "day",
        "weather": "dry",
    }


@pytest.mark.parametrize(
    "description, light, weather",
    [
        ("Night, rain, wet road, peds", "night", "rain"),
        ("night, big street", "night", "dry"),
        ("NIGHT, parking lot", "night", "dry"),
        ("Rain, turn right", "day", "rain"),
        ("Wait at intersection, raining, peds", "day", "rain"),
        ("Overcast, rainy", "day", "rain"),
        ("Drive past train station", "day", "dry"),
        ("Storm drain, construction", "day", "dry"),
        ("Knight street, brainstorm", "day", "dry"),
        ("", "day", "dry"),
    ],
)
def test_scene_domains_light_weather(description, light, weather):
    domains = scene_domains(_scene(description), {"location": "boston-seaport"})
    assert (domains["light"], domains["weather"]) == (light, weather)


def test_scene_domains_unknown_location():
    with pytest.raises(ValueError, match=r"scene-0042.*pittsburgh"):
        scene_domains(_scene("Day", name="scene-0042"), {"location": "pittsburgh"})


class _FakeTables:
    def __init__(self, scenes: list[dict], logs: list[dict]):
        self.tables = {"scene": {s["token"]: s for s in scenes}, "log": {r["token"]: r for r in logs}}


def test_split_scenes_fake():
    logs = [
        {"token": "L_bos", "location": "boston-seaport"},
        {"token": "L_sg", "location": "singapore-queenstown"},
        {"token": "L_bad", "location": "pittsburgh"},
    ]
    scenes = [
        # token, name, description, log; the order here is the scene.json order the splits must keep.
        ("t1", "scene-0061", "Parked truck, turn left", "L_sg"),  # train + mini_train
        ("t2", "scene-1077", "Night, big street, bus", "L_sg"),  # train + mini_train
        ("t3", "scene-0103", "Rain, peds", "L_bos"),  # val + mini_val
        ("t4", "scene-0001", "Night, rain, peds", "L_bos"),  # train
        ("t5", "scene-0077", "Nothing special", "L_bos"),  # test: no domain splits
        ("t6", "scene-0037", "Not in any split", "L_bad"),  # no split, location never checked
        ("t7", "scene-0553", "Train station", "L_bos"),  # val + mini_train
    ]
    tables = _FakeTables(
        [{"token": t, "name": n, "description": d, "log_token": lg} for t, n, d, lg in scenes], logs
    )
    assert split_scenes(tables) == {
        "train": ["t1", "t2", "t4"],
        "val": ["t3", "t7"],
        "test": ["t5"],
        "mini_train": ["t1", "t2", "t7"],
        "mini_val": ["t3"],
        "boston_train": ["t4"],
        "boston_val": ["t3", "t7"],
        "singapore_train": ["t1", "t2"],
        "day_train": ["t1"],
        "day_val": ["t3", "t7"],
        "night_train": ["t2", "t4"],
        "dry_train": ["t1", "t2"],
        "dry_val": ["t7"],
        "rain_train": ["t4"],
        "rain_val": ["t3"],
    }


def test_split_scenes_unknown_location_in_official_split():
    tables = _FakeTables(
        [{"token": "t", "name": "scene-0003", "description": "Day", "log_token": "L"}],
        [{"token": "L", "location": "pittsburgh"}],
    )
    with pytest.raises(ValueError, match="scene-0003"):
        split_scenes(tables)


def test_split_scenes_real_sample():
    if not (DATAROOT / VERSION).is_dir():
        pytest.skip(f"real nuScenes sample not found at {DATAROOT.resolve()} (shared test data absent)")
    from bevjax.data.nuscenes import NuScenesTables

    tables = NuScenesTables(DATAROOT, VERSION)
    ((token, scene),) = tables.tables["scene"].items()
    assert scene["name"] == "scene-0061"
    assert tables.tables["log"][scene["log_token"]]["location"] == "singapore-onenorth"
    # Description: "Parked truck, construction, intersection, turn left, following a van" -> day, dry.
    assert scene_domains(scene, tables.tables["log"][scene["log_token"]]) == {
        "city": "singapore",
        "light": "day",
        "weather": "dry",
    }
    assert split_scenes(tables) == {
        "train": [token],
        "mini_train": [token],
        "singapore_train": [token],
        "day_train": [token],
        "dry_train": [token],
    }
