"""Nearest neighbours of LiDAR point sets under jit: blockwise brute force with static shapes (SemanticFlow).

SemanticFlow (self-supervised LiDAR scene flow) needs, for every point of a sweep, its nearest point in the next
sweep (the truncated Chamfer loss) and its k nearest points in the same sweep (the spatial smoothness loss of the
motion masks). Both are computed here by brute force over fixed-size blocks, so that every shape is static and
the same code runs under ``jax.jit`` on CPU, GPU and TPU:

- queries and references are padded to multiples of their block sizes with masked points (``valid`` False) and
  reshaped into blocks; a ``lax.map`` runs over the query blocks and, inside it, a ``lax.scan`` over the
  reference blocks carries the running minimum (``nearest_neighbor``) or the running top-k (``knn``) of each
  query of the block. The full ``n x m`` distance matrix is never formed: one block of it at a time is.
- squared distances are summed coordinate by coordinate, ``sum_c (q_c - r_c)^2``, in float32. The expansion
  ``|q|^2 + |r|^2 - 2 q.r`` would use a matmul but loses ``eps * |q|^2`` to cancellation: about 1e-3 m^2 for
  points 100 m from the origin, the square of 3 cm, enough to swap neighbours whose distances differ by less.
  The difference form is accurate to float32 rounding of the distance itself and, on CPU, no slower (measured
  below).
- invalid points (padding, or points whose coordinates are not all finite) are never returned as neighbours.
  A query without a valid reference at a finite distance, and an invalid query, get the index ``NO_NEIGHBOR``
  (-1) and the squared distance ``+inf``: ``index == -1`` exactly where ``dist2 == inf``.
- ties are broken towards the lowest reference index, in every backend and for every block size: within a
  block the first minimum is taken, across blocks a later block must be strictly closer to replace the
  running best; ``lax.top_k`` puts the lower position first among equal values, and the running top-k
  (earlier, lower indices) comes before the new block in its candidates.
- the search runs under ``stop_gradient`` and only returns indices; the returned distances are recomputed from
  the gathered neighbour coordinates, ``|q_i - r_j(i)|^2``. So the gradient with respect to both point sets
  is the exact gradient of the distance to the chosen neighbour (the derivative of the minimum wherever the
  nearest neighbour is unique): ``2 (q_i - r_j)`` for the query and ``-2 (q_i - r_j)`` for the reference,
  at the cost of a gather, and the blockwise scan is never differentiated.

Memory: the peak of temporaries is one block of distances, ``4 * query_block * reference_block`` bytes for
``nearest_neighbor`` (16 MiB at the default 2048 x 2048) and about ``8 * query_block * (reference_block + k)``
bytes, twice, for ``knn`` (16 MiB at 256 x 4096), plus ``O(n + m)`` (``O(n k)`` for knn) for the padded copies
and the outputs. It does not grow with ``n * m``: compiled for CPU at 100k x 100k, ``nearest_neighbor`` and
``chamfer_distances`` hold 19-20 MiB of temporaries and ``knn`` (k = 16) 13 MiB; at 200k x 200k, 22 MiB and
21 MiB (``tests/test_neighbors.py`` checks this). Time is ``O(n m)``.

Speed on 2 shared CPU cores (jit, float32, uniform points in a 100 m cube), in pairs per second: the block as
written here (reference-major ``[rb, qb]``, materialised, minimum over the reference axis, the index of the
first minimum found by equality) 2.5 G/s at 32k x 32k for blocks from 1024 to 4096 (2.6 G/s at 100k x 100k:
3.8 s for one ``nearest_neighbor``, index identical to ``cKDTree``). At 16k x 16k, ``argmin`` on the same
block gives 0.66 G/s (XLA's CPU variadic reduce does not vectorise) and the ``|q|^2 + |r|^2 - 2 q.r`` form
with ``argmin`` 0.6 G/s. ``knn`` (``lax.top_k`` over the running top-k and a query-major ``[qb, rb]`` block)
runs at 0.4 G/s (32k points, k = 8; 0.39-0.47 G/s at 16k, k = 16, for blocks from 64 x 16384 to 1024 x 1024).
Larger blocks mean fewer loop iterations, which matters on GPU and TPU, where each iteration costs a few
microseconds of launch overhead; the defaults were not tuned on those.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

NO_NEIGHBOR = -1  # index of "no neighbour": no valid reference at a finite distance, or an invalid query

# Defaults: 16 MiB of distances per block either way (see the module docstring).
NN_QUERY_BLOCK = 2048
NN_REFERENCE_BLOCK = 2048
KNN_QUERY_BLOCK = 256
KNN_REFERENCE_BLOCK = 4096

_ALIGN = 8  # a set smaller than its block is padded only to a multiple of this, not to the whole block


class ChamferDistances(NamedTuple):
    """Nearest squared distances and indices in both directions between ``pc0 [n, 3]`` and ``pc1 [m, 3]``."""

    dist0to1: jax.Array  # [n] float32, +inf where there is no neighbour
    index0to1: jax.Array  # [n] int32 into pc1, NO_NEIGHBOR where there is none
    dist1to0: jax.Array  # [m] float32
    index1to0: jax.Array  # [m] int32 into pc0


def nearest_neighbor(
    query,
    reference,
    query_valid=None,
    reference_valid=None,
    *,
    query_block: int = NN_QUERY_BLOCK,
    reference_block: int = NN_REFERENCE_BLOCK,
) -> tuple[jax.Array, jax.Array]:
    """For every query point, its nearest valid reference point: squared distance and index.

    Ties go to the lowest reference index. Jit-able (block sizes static) and differentiable w.r.t. both point
    sets through the returned distances (see the module docstring).

    Args:
      query: [n, 3] points (any [n, d] with the reference's d); cast to float32.
      reference: [m, 3] points.
      query_valid: optional [n] bool, False for padding; default all True. Non-finite points are invalid too.
      reference_valid: optional [m] bool; invalid references are never returned.
      query_block, reference_block: block sizes (static); peak temporaries ``4 * query_block *
        reference_block`` bytes.

    Returns:
      ``(dist2, index)``: dist2 [n] float32 ``|query_i - reference_index_i|^2``, +inf where there is no
      neighbour; index [n] int32 into ``reference``, ``NO_NEIGHBOR`` (-1) for invalid queries and for queries
      without a valid reference.
    """
    query, query_valid = _points_and_mask("query", query, "query_valid", query_valid)
    reference, reference_valid = _points_and_mask("reference", reference, "reference_valid", reference_valid)
    _check_same_dim("query", query, "reference", reference)
    qb = _block("query_block", query_block, query.shape[0])
    rb = _block("reference_block", reference_block, reference.shape[0])
    index = _nearest_index(
        lax.stop_gradient(query), lax.stop_gradient(reference), query_valid, reference_valid, qb, rb
    )  # n
    return _gathered_dist2(query, reference, index), index


def knn(
    points,
    k: int,
    valid=None,
    *,
    exclude_self: bool = True,
    query_block: int = KNN_QUERY_BLOCK,
    reference_block: int = KNN_REFERENCE_BLOCK,
) -> tuple[jax.Array, jax.Array]:
    """The k nearest valid neighbours of every point within one set, sorted by distance.

    Ties go to the lowest index. ``exclude_self`` leaves out the point itself (same index); other points at the
    same position are still neighbours, at distance 0. Jit-able (``k``, ``exclude_self`` and the block sizes
    static) and differentiable w.r.t. ``points`` through the returned distances.

    Args:
      points: [n, 3] points (any [n, d]); cast to float32.
      k: number of neighbours (static, >= 1; may exceed the number of valid points).
      valid: optional [n] bool, False for padding; default all True. Non-finite points are invalid too.
      exclude_self: whether a point is its own neighbour (static).
      query_block, reference_block: block sizes (static); peak temporaries about ``16 * query_block *
        (reference_block + k)`` bytes.

    Returns:
      ``(dist2, index)``: dist2 [n, k] float32 ascending, +inf in the slots beyond the available neighbours;
      index [n, k] int32, ``NO_NEIGHBOR`` (-1) in those slots and in every slot of an invalid point.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    points, valid = _points_and_mask("points", points, "valid", valid)
    qb = _block("query_block", query_block, points.shape[0])
    rb = _block("reference_block", reference_block, points.shape[0])
    frozen = lax.stop_gradient(points)
    index = _knn_index(frozen, frozen, valid, valid, k, bool(exclude_self), qb, rb)  # n k
    return _gathered_dist2(points, points, index), index


def chamfer_distances(
    pc0,
    pc1,
    valid0=None,
    valid1=None,
    *,
    query_block: int = NN_QUERY_BLOCK,
    reference_block: int = NN_REFERENCE_BLOCK,
) -> ChamferDistances:
    """Nearest squared distances both ways between two point sets, the terms of a (truncated) Chamfer loss.

    ``dist0to1[i] = min_j |pc0_i - pc1_j|^2`` over valid ``j``, and ``dist1to0`` the other way; a Chamfer loss
    is e.g. ``mean(min(dist0to1, t)) + mean(min(dist1to0, t))`` over valid points (written by the caller).
    The distances are recomputed from the gathered neighbours, so gradients flow to both ``pc0`` and ``pc1``
    (e.g. ``pc0 = points + flow``: the gradient reaches the flow) and are exact where the neighbour is unique.
    Invalid points get +inf and index -1: mask them (``jnp.where``) before summing.

    Args:
      pc0: [n, 3] points, e.g. the first sweep moved by the predicted flow.
      pc1: [m, 3] points, e.g. the second sweep.
      valid0: optional [n] bool; valid1: optional [m] bool (default all True).
      query_block, reference_block: block sizes of both directions (static).

    Returns:
      ``ChamferDistances(dist0to1 [n], index0to1 [n], dist1to0 [m], index1to0 [m])`` as in
      ``nearest_neighbor``.
    """
    # Checked here so that errors name these arguments; nearest_neighbor's own checks then pass.
    pc0, valid0 = _points_and_mask("pc0", pc0, "valid0", valid0)
    pc1, valid1 = _points_and_mask("pc1", pc1, "valid1", valid1)
    _check_same_dim("pc0", pc0, "pc1", pc1)
    blocks = dict(query_block=query_block, reference_block=reference_block)
    dist0to1, index0to1 = nearest_neighbor(pc0, pc1, valid0, valid1, **blocks)
    dist1to0, index1to0 = nearest_neighbor(pc1, pc0, valid1, valid0, **blocks)
    return ChamferDistances(dist0to1, index0to1, dist1to0, index1to0)


# Search (indices only, no gradient) ----------------------------------------------------------------------------


def _nearest_index(query, reference, query_valid, reference_valid, qb: int, rb: int) -> jax.Array:
    """[n] int32 index of the nearest valid reference of each query, NO_NEIGHBOR where none (or invalid query)."""
    n, m = query.shape[0], reference.shape[0]
    if n == 0 or m == 0:
        return jnp.full((n,), NO_NEIGHBOR, jnp.int32)
    # Invalid queries are searched like the others (their rows are zeros) and masked at the end.
    q_blocks = _blocks(query, qb)  # nq qb d
    r_blocks, rv_blocks = _blocks(reference, rb), _blocks(reference_valid, rb)  # nr rb d, nr rb
    r_offsets = jnp.arange(r_blocks.shape[0], dtype=jnp.int32) * rb  # nr

    def query_block(q):  # q: qb d
        def reference_step(carry, xs):
            best, best_index = carry  # qb, qb
            r, rv, offset = xs  # rb d, rb, ()
            # Reference-major so that the minimum runs over the leading axis, vectorised across queries.
            d2 = jnp.where(rv[:, None], _pairwise_dist2(r, q), jnp.inf)  # rb qb
            # One materialised copy of the block: the equality below must compare the very values the
            # minimum saw (a recomputation in another fusion could round differently, e.g. with an FMA).
            d2 = lax.optimization_barrier(d2)
            block_best = jnp.min(d2, axis=0)  # qb
            rows = lax.broadcasted_iota(jnp.int32, d2.shape, 0)  # rb qb
            # First row attaining the minimum (argmin, but 4x faster on CPU than XLA's variadic reduce).
            block_index = jnp.min(jnp.where(d2 == block_best, rows, rb), axis=0) + offset  # qb
            # Strict: on a tie the earlier block, i.e. the lower index, keeps it; inf never replaces -1.
            better = block_best < best
            return (jnp.where(better, block_best, best), jnp.where(better, block_index, best_index)), None

        init = (jnp.full((qb,), jnp.inf, jnp.float32), jnp.full((qb,), NO_NEIGHBOR, jnp.int32))
        (_, index), _ = lax.scan(reference_step, init, (r_blocks, rv_blocks, r_offsets))
        return index  # qb

    index = lax.map(query_block, q_blocks).reshape(-1)[:n]  # (nq qb) -> n
    return jnp.where(query_valid, index, NO_NEIGHBOR)


def _knn_index(
    query, reference, query_valid, reference_valid, k: int, exclude_self: bool, qb: int, rb: int
) -> jax.Array:
    """[n, k] int32 indices of the k nearest valid references, ascending, NO_NEIGHBOR in empty slots."""
    n, m = query.shape[0], reference.shape[0]
    if n == 0 or m == 0:
        return jnp.full((n, k), NO_NEIGHBOR, jnp.int32)
    q_blocks = _blocks(query, qb)  # nq qb d
    q_offsets = jnp.arange(q_blocks.shape[0], dtype=jnp.int32) * qb  # nq
    r_blocks, rv_blocks = _blocks(reference, rb), _blocks(reference_valid, rb)  # nr rb d, nr rb
    r_offsets = jnp.arange(r_blocks.shape[0], dtype=jnp.int32) * rb  # nr

    def query_block(xs):
        q, q_offset = xs  # qb d, ()
        q_ids = q_offset + jnp.arange(qb, dtype=jnp.int32)  # qb

        def reference_step(carry, xs):
            best, best_index = carry  # qb k, qb k (ascending)
            r, rv, offset = xs  # rb d, rb, ()
            ids = offset + lax.broadcasted_iota(jnp.int32, (qb, rb), 1)  # qb rb
            keep = rv[None, :]  # 1 rb
            if exclude_self:
                keep = keep & (ids != q_ids[:, None])  # qb rb
            # Query-major: top_k runs on the last axis.
            d2 = jnp.where(keep, _pairwise_dist2(q, r), jnp.inf)  # qb rb
            # The running top-k first: it holds lower indices than this block, and top_k puts the lower
            # position first among equal values, so ties keep going to the lowest index.
            cand = jnp.concatenate([best, d2], axis=1)  # qb (k + rb)
            cand_index = jnp.concatenate([best_index, ids], axis=1)  # qb (k + rb)
            neg, pos = lax.top_k(-cand, k)  # qb k
            return (-neg, jnp.take_along_axis(cand_index, pos, axis=1)), None

        init = (jnp.full((qb, k), jnp.inf, jnp.float32), jnp.full((qb, k), NO_NEIGHBOR, jnp.int32))
        (best, index), _ = lax.scan(reference_step, init, (r_blocks, rv_blocks, r_offsets))
        # Slots filled from masked candidates (inf) hold their position, not a neighbour.
        return jnp.where(best < jnp.inf, index, NO_NEIGHBOR)  # qb k

    index = lax.map(query_block, (q_blocks, q_offsets)).reshape(-1, k)[:n]  # (nq qb) k -> n k
    return jnp.where(query_valid[:, None], index, NO_NEIGHBOR)


# Helpers -------------------------------------------------------------------------------------------------------


def _pairwise_dist2(a, b) -> jax.Array:
    """[p, q] ``sum_c (a_pc - b_qc)^2`` of a [p, d] and b [q, d], coordinate by coordinate (no [p, q, d])."""
    return sum((a[:, None, c] - b[None, :, c]) ** 2 for c in range(a.shape[-1]))


def _gathered_dist2(query, reference, index) -> jax.Array:
    """``|query_i - reference_index|^2`` for index [n] or [n, k]; +inf where index is NO_NEIGHBOR.

    Differentiable w.r.t. both point sets; the masked branch gets a zero gradient (the gathered point is
    finite: inputs were sanitised).
    """
    if reference.shape[0] == 0:
        return jnp.full(index.shape, jnp.inf, jnp.float32)
    safe = jnp.maximum(index, 0)  # n ... ; -1 would wrap to the last point
    neighbor = reference[safe]  # n ... d
    q = query.reshape(query.shape[:1] + (1,) * (index.ndim - 1) + query.shape[1:])  # n 1.. d
    d2 = sum((q[..., c] - neighbor[..., c]) ** 2 for c in range(query.shape[-1]))  # n ...
    return jnp.where(index >= 0, d2, jnp.inf)


def _points_and_mask(name: str, points, valid_name: str, valid) -> tuple[jax.Array, jax.Array]:
    """float32 [n, d] points with invalid rows zeroed, and [n] bool validity (also False for non-finite rows).

    Zeroing keeps NaN or inf out of every later product, so that masked branches have zero (not NaN)
    gradients and a garbage padded point can never win a minimum.
    """
    points = jnp.asarray(points)
    if points.ndim != 2 or points.shape[-1] < 1:
        raise ValueError(f"{name} must be [n, d] points (d = 3 for LiDAR), got shape {points.shape}")
    points = points.astype(jnp.float32)
    n = points.shape[0]
    if valid is None:
        valid = jnp.ones((n,), bool)
    else:
        valid = jnp.asarray(valid)
        if valid.shape != (n,) or valid.dtype != jnp.bool_:
            raise ValueError(
                f"{valid_name} must be bool [{n}] like {name} {points.shape}, got {valid.dtype} {valid.shape}"
            )
    valid = valid & jnp.all(jnp.isfinite(points), axis=-1)  # n
    return jnp.where(valid[:, None], points, 0.0), valid


def _check_same_dim(name_a: str, a, name_b: str, b) -> None:
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"{name_a} {a.shape} and {name_b} {b.shape} must have the same number of coordinates"
        )


def _block(name: str, block: int, size: int) -> int:
    """The block size to use for a set of ``size`` points: ``block``, or less for a smaller set."""
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"{name} must be a positive int, got {block!r}")
    return max(1, min(block, -(-size // _ALIGN) * _ALIGN))


def _blocks(x, block: int) -> jax.Array:
    """[n, ...] -> [ceil(n / block), block, ...], padded with zeros (False for a mask)."""
    pad = -x.shape[0] % block
    x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))  # (nb block) ...
    return x.reshape((-1, block) + x.shape[1:])  # nb block ...
