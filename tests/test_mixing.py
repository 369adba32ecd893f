"""bevjax/data/mixing.py: a main stream with a second stream nested under its name, its main batches those of
make_dataset, independent per-stream batch sizes and an exact resume from the iterator's state."""

from __future__ import annotations

import numpy as np
import pytest

from bevjax.data.mixing import map_stream, stream_seed, zip_streams
from bevjax.data.pipeline import make_dataset, make_iterator


class _Source:
    frames_per_sequence = 4

    def __init__(self, n, offset):
        self.n, self.offset = n, offset

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"x": np.int64(i + self.offset), "label": np.int64(-1)}


def _drop_label(batch):
    return {**batch, "target": {k: v for k, v in batch["target"].items() if k != "label"}}


def _dataset(seed=3):
    main = map_stream(_Source(16, 0), seed=seed, window=2)
    target = map_stream(_Source(8, 1000), seed=stream_seed(seed, "target"), window=2)
    return zip_streams(main, 2, {"target": (target, 3)}, post=_drop_label, read_threads=1)


def test_nested_batches_match_make_dataset_and_resume():
    it = make_iterator(_dataset())
    first = [next(it) for _ in range(3)]
    plain = make_iterator(make_dataset(_Source(16, 0), batch_size=2, seed=3, window=2, read_threads=1,
                                       process_index=0, process_count=1))  # fmt: skip
    for b in first:
        assert set(b) == {"x", "label", "sequence_start", "target"}
        assert set(b["target"]) == {"x", "sequence_start"}  # the label is gone
        assert b["x"].shape == (2, 2) and b["target"]["x"].shape == (3, 2)
        assert (b["target"]["x"] >= 1000).all() and (b["x"] < 1000).all()
        np.testing.assert_array_equal(b["x"], next(plain)["x"])
    it = make_iterator(_dataset())
    next(it)
    state = it.get_state()
    rest = [next(it) for _ in range(2)]
    resumed = make_iterator(_dataset(), state)
    for b in rest:
        r = next(resumed)
        np.testing.assert_array_equal(r["x"], b["x"])
        np.testing.assert_array_equal(r["target"]["x"], b["target"]["x"])


def test_concat_streams_appends_examples_and_names_a_key_mismatch():
    from bevjax.data.mixing import ConcatStreams

    main = {"x": np.zeros((2, 3)), "w": np.ones(2)}
    batch = {**main, "syn": {"x": np.full((1, 3), 7.0), "w": np.array([0.5])}, "target": {"x": np.ones((2, 3))}}
    out = ConcatStreams(["syn"])(batch)
    assert set(out) == {"x", "w", "target"}
    np.testing.assert_array_equal(out["x"], [[0, 0, 0], [0, 0, 0], [7, 7, 7]])
    np.testing.assert_array_equal(out["w"], [1, 1, 0.5])
    with pytest.raises(ValueError, match="stream 'syn' has keys"):
        ConcatStreams(["syn"])({**main, "syn": {"x": np.zeros((1, 3))}})
