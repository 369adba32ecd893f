"""Official nuScenes scene splits and the day/night, dry/rain, Boston/Singapore domain splits.

The scene lists are the official split definition of the nuScenes devkit (``nuscenes/utils/splits.py`` in
the PyPI package ``nuscenes-devkit``, checked against version 1.2.0); only the scene names are taken from
there. The devkit defines ``train`` as the union of its two halves ``train_detect`` and ``train_track``.

=============  ======  ==========================================================
split          scenes  note
=============  ======  ==========================================================
``train``         700  v1.0-trainval
``val``           150  v1.0-trainval
``test``          150  v1.0-test (no annotations)
``mini_train``      8  v1.0-mini; 6 of them are train scenes, 2 (0553, 0796) val
``mini_val``        2  v1.0-mini; both are val scenes
=============  ======  ==========================================================

``train``, ``val`` and ``test`` are pairwise disjoint and together hold 1000 scenes numbered between
``scene-0001`` and ``scene-1110`` (110 numbers in that range are unused). The mini splits are drawn from
``train`` and ``val``: ``mini_train`` is *not* a subset of ``train``.

Domain splits for unsupervised domain adaptation (as in NRSeg and the cross-domain BEV segmentation works it
follows) partition the official ``train`` and ``val`` scenes by :func:`scene_domains`;
:data:`DOMAIN_SPLIT_PAIRS` lists the three (source, target) settings.
"""

from __future__ import annotations

import re

# Scene numbers of each split as sorted, comma-separated ranges ("a-b" is a..b inclusive).
_RANGES = {
    "train": (
        "1-2,4-11,19-34,41-76,120-135,138-139,149-152,154-155,157-168,170-185,187-188,190-196,199-200,"
        "202-204,206-214,218-220,222,224-264,283-306,315-318,321,323-324,328,347-386,388-403,405-408,"
        "410-459,461-465,467-469,471-472,474-480,499-502,504-515,517-518,525-539,541-546,566,568,570-578,"
        "580,582-600,639-679,681,683-689,695-698,700-701,703-719,726-728,730-731,733-741,744,746-747,"
        "749-752,757-765,767-769,786-787,789-792,803-806,808-813,815-817,819-822,847-856,858,860-866,"
        "868-873,875-878,880,882-903,945,947,949,952-953,955-961,975-984,988-992,994-1025,1044-1058,"
        "1074-1102,1104-1110"
    ),
    "val": (
        "3,12-18,35-36,38-39,92-110,221,268-278,329-332,344-346,519-524,552-565,625-627,629-630,632-638,"
        "770-771,775,777-778,780-784,794-800,802,904-917,919-931,962-963,966-969,971-972,1059-1073"
    ),
    "test": (
        "77-91,111-119,140,142-148,265-266,279-282,307-314,333-343,481-498,547-551,601-604,606-624,827-831,"
        "833-842,844-846,932-933,935-943,1026-1043"
    ),
    "mini_train": "61,553,655,757,796,1077,1094,1100",
    "mini_val": "103,916",
}


def _expand(ranges: str) -> tuple[str, ...]:
    """``"1-3,7"`` -> ``("scene-0001", "scene-0002", "scene-0003", "scene-0007")``."""
    numbers: list[int] = []
    for part in ranges.split(","):
        first, _, last = part.partition("-")
        numbers.extend(range(int(first), int(last or first) + 1))
    return tuple(f"scene-{n:04d}" for n in numbers)


OFFICIAL_SPLITS: dict[str, tuple[str, ...]] = {name: _expand(r) for name, r in _RANGES.items()}
"""Split name -> sorted scene names, for ``train``, ``val``, ``test``, ``mini_train`` and ``mini_val``."""

DOMAIN_SPLIT_PAIRS: tuple[tuple[str, str], ...] = (
    ("boston", "singapore"),
    ("day", "night"),
    ("dry", "rain"),
)
"""The three adaptation settings as (source domain, target domain): train on ``<source>_train`` (labelled)
and ``<target>_train`` (unlabelled), evaluate on ``<target>_val``. Each pair is one axis of
:func:`scene_domains` (``city``, ``light``, ``weather``)."""

DOMAINS: tuple[str, ...] = tuple(d for pair in DOMAIN_SPLIT_PAIRS for d in pair)
"""All domain names, in the order of :data:`DOMAIN_SPLIT_PAIRS`."""

_CITY_OF_LOCATION = {
    "boston-seaport": "boston",
    "singapore-onenorth": "singapore",
    "singapore-queenstown": "singapore",
    "singapore-hollandvillage": "singapore",
}

# A keyword counts when it starts a word: "Night", "night,", "Rain", "raining", "rainy" match, while "train"
# or "drain" (keyword inside a word) do not.
_NIGHT = re.compile(r"\bnight", re.IGNORECASE)
_RAIN = re.compile(r"\brain", re.IGNORECASE)


def scene_domains(scene: dict, log: dict) -> dict[str, str]:
    """Domains of a nuScenes scene: ``{"city": ..., "light": ..., "weather": ...}``.

    Args:
      scene: a ``scene`` record (uses ``name`` and ``description``).
      log: the scene's ``log`` record (uses ``location``).

    Returns:
      ``city``: ``"boston"`` for ``boston-seaport``, ``"singapore"`` for ``singapore-onenorth``,
      ``singapore-queenstown`` and ``singapore-hollandvillage``.
      ``light``: ``"night"`` when the description matches ``\\bnight`` (case-insensitive), else ``"day"``.
      ``weather``: ``"rain"`` when the description matches ``\\brain`` (case-insensitive), else ``"dry"``.

    Raises:
      ValueError: for any other log location.
    """
    location = log["location"]
    city = _CITY_OF_LOCATION.get(location)
    if city is None:
        raise ValueError(
            f"scene {scene.get('name', '?')!r}: unknown nuScenes location {location!r} "
            f"(expected one of {sorted(_CITY_OF_LOCATION)})"
        )
    description = scene.get("description", "")
    return {
        "city": city,
        "light": "night" if _NIGHT.search(description) else "day",
        "weather": "rain" if _RAIN.search(description) else "dry",
    }


def split_scenes(tables) -> dict[str, list[str]]:
    """Scene tokens of every split that is non-empty in a dataroot, each in ``scene.json`` order.

    Splits, in this key order: the official ``train``, ``val``, ``test``, ``mini_train``, ``mini_val`` (by scene
    name), then ``<domain>_train`` and ``<domain>_val`` for each domain of :data:`DOMAINS` (official train or
    val scenes whose :func:`scene_domains` include that domain). Scenes named in no official list belong to no
    split, and their domains are not computed.

    Args:
      tables: a :class:`~bevjax.data.nuscenes.NuScenesTables` (or any object whose ``tables`` holds
        ``{"scene": {token: record}, "log": {token: record}}``; ``scene["log_token"]`` links the two).
    """
    membership = {name: frozenset(scenes) for name, scenes in OFFICIAL_SPLITS.items()}
    out: dict[str, list[str]] = {name: [] for name in OFFICIAL_SPLITS}
    for domain in DOMAINS:
        out[f"{domain}_train"] = []
        out[f"{domain}_val"] = []
    logs = tables.tables["log"]
    for token, scene in tables.tables["scene"].items():
        name = scene["name"]
        for split, names in membership.items():
            if name in names:
                out[split].append(token)
        for split in ("train", "val"):
            if name in membership[split]:
                for domain in scene_domains(scene, logs[scene["log_token"]]).values():
                    out[f"{domain}_{split}"].append(token)
    return {split: tokens for split, tokens in out.items() if tokens}
