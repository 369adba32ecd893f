"""NRSeg (METHODS.md section 2) semi-supervised: a labelled fraction of one domain's training sequences, the whole
split as the unlabelled stream of the Mean Teacher, labelled synthetic windows of the same domain weighted by PGCM.

The model, losses and every other field are those of ``configs/nrseg_uda.py`` (read it for them); this config
changes the data: ``data.labelled_fraction`` (the first ``round(f * 8)`` of the 8 Boston training sequences
are labelled), ``data.target_split = boston_train`` (all 8, labels dropped in the pipeline), evaluation on
``boston_val``, synthetic windows of ``boston_synthetic_train``.

Variant: a fraction ``eighth`` (default), ``quarter`` or ``half`` and the modifiers of ``configs/nrseg_uda.py``
(``real``: no synthetic data; ``tiny``; ``nuscenes``), joined by '_':
    python -m bevjax.train --config configs/nrseg_ssl.py --workdir runs/nrseg_ssl_8
    python -m bevjax.train --config configs/nrseg_ssl.py:quarter_real --workdir runs/nrseg_ssl_4_real
Tiny (tests and smoke checks; 2 labelled sequences of 4 frames, one of them labelled at half):
    python -m bevjax.train --config configs/nrseg_ssl.py:half_tiny --workdir runs/nrseg_ssl_tiny
nuScenes (for accelerators; the labelled fraction of the official train scenes' keyframes, all of them unlabelled):
    python -m bevjax.train --config configs/nrseg_ssl.py:eighth_nuscenes --workdir runs/nrseg_ssl_nusc \
        --config.data.nuscenes.dataroot=/data/nuscenes
Evaluate (the EMA teacher; eval.json and prediction.png):
    python -m bevjax.evaluate --config configs/nrseg_ssl.py --workdir runs/nrseg_ssl_8
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

FRACTIONS = {"eighth": 1 / 8, "quarter": 1 / 4, "half": 1 / 2}


def _uda():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nrseg_uda.py")
    spec = importlib.util.spec_from_file_location("_nrseg_uda_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    tokens = [t for t in (arg or "default").split("_") if t != "default"]
    fractions = [t for t in tokens if t in FRACTIONS]
    uda = _uda()
    rest = [t for t in tokens if t not in FRACTIONS]
    if len(fractions) > 1 or any(t not in uda.MODIFIERS for t in rest):
        raise ValueError(
            f"configs/nrseg_ssl.py:{arg}: give at most one fraction of {list(FRACTIONS)} and modifiers "
            f"{list(uda.MODIFIERS)} joined by '_', e.g. eighth, quarter_real, half_tiny, eighth_nuscenes"
        )
    fraction = FRACTIONS[fractions[0] if fractions else "eighth"]
    c = uda.get_config("_".join(rest) or None)
    c.data.labelled_fraction = fraction
    c.data.target_domains = ()
    if c.data.dataset == "world":
        c.data.domains = ("boston",)
        c.data.train_split, c.data.eval_split = "boston_train", "boston_val"
        c.data.target_split = "boston_train"  # every sequence, unlabelled
        c.data.train_sequences = 8  # 1/8 of them: one labelled sequence of 40 frames
        if c.data.synthetic_domain:
            c.data.synthetic_domain = "boston_synthetic"
        c.pgcm.tau = 0.85
        if "tiny" in rest:
            c.data.train_sequences = 2  # at 1/2: one labelled sequence of 4 frames
    else:  # nuScenes: a fraction of the official train scenes
        c.data.train_split = c.data.target_split = "train"
        c.data.eval_split = "val"
    return c
