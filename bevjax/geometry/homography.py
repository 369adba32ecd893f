"""Flat-ground homographies between the BEV grid and the cameras, and NRSeg's PGCM score.

NRSeg's perspective-geometry consistency metric (PGCM; Eq. 7 of the paper, issue 11) back-projects the BEV
ground-truth mask of a class (road, car) into every camera through the homography of the ground plane
``z = z0`` of the ego frame (``z0 = 0``: nuScenes puts the ego origin on the ground), compares it with the
mask a perspective-view (PV) segmenter predicts on the (synthetic) image and scores the frame by their IoU
``R``; the frame's loss weight is ``w = 1 if R > tau else R``.

Homography. With ``(R, t) = ego_to_cam = inv(cam_to_ego)``, columns ``r1 r2 r3`` of ``R``, a ground point
``p = (x, y, z0)`` has camera coordinates ``R p + t = x r1 + y r2 + (t + z0 r3)``, so::

    depth * (u, v, 1) = K (R p + t) = K [r1 r2 (t + z0 r3)] (x, y, 1) = H0 (x, y, 1)
    H = A H0,   A = [[P, q], [0, 0, 1]]   (P = post_rots[:2, :2], q = post_trans[:2])

where ``A`` is the LSS image augmentation ``aug_pixel = post_rots @ pixel + post_trans`` as a homogeneous 3x3
on ``(u, v, 1)`` (LSS's ``post_rots`` are 2x2 resize / rotation blocks with ``post_rots[2] = (0, 0, 1)`` and
``post_trans[2] = 0``; the third row and column are taken to be those, as ``frustum_to_ego`` does when it
undoes the augmentation of ``(u, v, depth)``). ``H (x, y, 1)`` is ``depth * (u', v', 1)``: its third
component is the z-depth of the ground point, positive in front of the camera.

Inverse (pixel -> ground). The ray of augmented pixel ``p'`` is ``o + lam d`` in the ego frame with
``o = cam_to_ego[:3, 3]``, ``d = R_ce K^-1 A^-1 p'`` (``R_ce = R^T``; the camera-frame ray has z = 1, so
``lam`` is the z-depth) and meets the plane at ``lam = (z0 - o_z) / d_z``. Hence, with ``s = z0 - o_z``
(minus the camera height above the plane)::

    H^-1 = (1 / s) [[s, 0, o_x], [0, s, o_y], [0, 0, 1]] R_ce K^-1 A^-1,
    H^-1 (u', v', 1) = (x, y, 1) / depth

in closed form, better conditioned than a numerical inverse near the horizon. A pixel sees the ground when
the third component ``1 / depth`` is positive; pixels at or above the horizon get ``1 / depth <= 0`` (the ray
meets the plane behind the camera, or never). A camera on the plane (``s = 0``) has no ground homography.

Back-projection (``bev_mask_to_camera``). Every pixel (or ``supersample**2`` sub-pixel rays, offsets
``(k + 0.5) / s - 0.5`` about the pixel centre as the world renderer uses) meets the ground at ``(x, y)``,
which lies in BEV cell ``(i, j) = floor(((x, y) - (x_min, y_min)) / res)`` (``BEVGrid``: cell ``(i, j)`` is
centred at ``(x_min + (i + 0.5) res, y_min + (j + 0.5) res)``); the pixel takes that cell's value, False for
rays above the horizon or outside the grid. Objects are not flat: a car's BEV footprint back-projects to its
footprint on the road, not to its silhouette (NRSeg's flat-ground assumption, ``h = 0`` in its Eq. 7).

Score (``pgcm_score``). ``R = |P & B| / |P | B|`` over the valid pixels of all cameras of a frame (P the
predicted PV mask, B the back-projected one), ``R = 1`` when the union is empty (nothing to disagree about).
``pgcm_weight(R, tau) = where(R > tau, 1, R)``; ``PGCM_TAU`` holds NRSeg's thresholds (0.85; 0.9 for
day -> night; 1.0 for dry -> rain, where every frame is weighted by its R).

Dimension letters: b frames (or masks), n cameras, h w image, x y BEV grid, s sub-pixel rays.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bevjax.geometry.grid import BEVGrid

_HIGHEST = jax.lax.Precision.HIGHEST

# NRSeg's PGCM thresholds: the default, day -> night adaptation, dry -> rain adaptation.
PGCM_TAU = {"default": 0.85, "day_night": 0.9, "dry_rain": 1.0}


def _xp(*arrays):
    """``jnp`` if any argument is a JAX array (or tracer), else ``np`` (float64 for offline passes)."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays if a is not None) else np


def _augmentation(post_rots, post_trans, batch_shape, xp, dtype):
    """[..., 3, 3] homogeneous pixel augmentation ``A = [[P, q], [0, 0, 1]]`` (identity when not given)."""
    eye = xp.broadcast_to(xp.eye(3, dtype=dtype), batch_shape + (3, 3))
    if post_rots is None and post_trans is None:
        return eye
    rots = eye if post_rots is None else xp.asarray(post_rots, dtype)
    trans = xp.zeros(batch_shape + (3,), dtype) if post_trans is None else xp.asarray(post_trans, dtype)
    rots, trans = xp.broadcast_to(rots, batch_shape + (3, 3)), xp.broadcast_to(trans, batch_shape + (3,))
    top = xp.concatenate([rots[..., :2, :2], trans[..., :2, None]], -1)  # ... 2 3
    return xp.concatenate([top, eye[..., 2:3, :]], -2)  # ... 3 3


def _inputs(intrinsics, cam_to_ego, post_rots, post_trans):
    xp = _xp(intrinsics, cam_to_ego, post_rots, post_trans)
    dtype = jnp.float32 if xp is jnp else np.float64
    k = xp.asarray(intrinsics, dtype)
    c2e = xp.asarray(cam_to_ego, dtype)
    batch_shape = tuple(np.broadcast_shapes(k.shape[:-2], c2e.shape[:-2]))
    k, c2e = xp.broadcast_to(k, batch_shape + (3, 3)), xp.broadcast_to(c2e, batch_shape + (4, 4))
    return xp, dtype, k, c2e, _augmentation(post_rots, post_trans, batch_shape, xp, dtype)


def _matmul(xp, a, b):
    return jnp.matmul(a, b, precision=_HIGHEST) if xp is jnp else a @ b


def ground_homography(intrinsics, cam_to_ego, post_rots=None, post_trans=None, ground_z=0.0):
    """Homographies from ego-frame ground points ``(x, y, 1)`` on ``z = ground_z`` to (augmented) pixels.

    ``H = A K [r1 r2 (t + z0 r3)]`` with ``(R, t) = ego_to_cam`` (columns ``r1 r2 r3`` of ``R``) and ``A`` the
    augmentation ``[[post_rots[:2, :2], post_trans[:2]], [0, 0, 1]]``; ``H (x, y, 1) = depth * (u', v', 1)``
    with ``depth`` the point's camera z (> 0 in front of the camera).

    NumPy in float64 for NumPy inputs, ``jnp`` (float32, ``Precision.HIGHEST``; jit-able) when any input is a
    JAX array.

    Args:
      intrinsics: [..., n, 3, 3] pinhole matrices K of the images before augmentation.
      cam_to_ego: [..., n, 4, 4] camera -> ego rigid transforms.
      post_rots: optional [..., n, 3, 3] image augmentation, ``aug_pixel = post_rots @ pixel + post_trans``.
      post_trans: optional [..., n, 3] (see ``post_rots``); both None: unaugmented images.
      ground_z: height z0 of the ground plane in the ego frame, metres.

    Returns:
      [..., n, 3, 3] homographies, float64 (NumPy) or float32 (JAX).
    """
    xp, dtype, k, c2e, aug = _inputs(intrinsics, cam_to_ego, post_rots, post_trans)
    rot_ce, origin = c2e[..., :3, :3], c2e[..., :3, 3]  # ... n 3 3, ... n 3
    rot = xp.swapaxes(rot_ce, -1, -2)  # ego_to_cam rotation R = R_ce^T
    trans = -xp.einsum("...ij,...j->...i", rot, origin)  # t = -R o
    plane = trans + ground_z * rot[..., :, 2]  # t + z0 r3
    m = xp.stack([rot[..., :, 0], rot[..., :, 1], plane], -1)  # ... n 3 3: [r1 r2 (t + z0 r3)]
    return _matmul(xp, aug, _matmul(xp, k, m))


def ground_homography_inverse(intrinsics, cam_to_ego, post_rots=None, post_trans=None, ground_z=0.0):
    """Closed-form inverse of ``ground_homography``: (augmented) pixels -> ground points ``(x, y, 1) / depth``.

    ``H^-1 = (1 / s) [[s, 0, o_x], [0, s, o_y], [0, 0, 1]] R_ce K^-1 A^-1`` with ``(R_ce, o)`` the rotation
    and translation of ``cam_to_ego`` and ``s = ground_z - o_z`` (the ray ``o + lam R_ce K^-1 A^-1 p'`` meets
    the plane at ``lam = s / d_z``). The third component of ``H^-1 (u', v', 1)`` is ``1 / depth``: positive
    for pixels that see the plane in front of the camera, <= 0 at and above the horizon. Undefined
    (division by zero) for a camera on the plane.

    Args and dtypes as ``ground_homography``.

    Returns:
      [..., n, 3, 3] inverse homographies.
    """
    xp, dtype, k, c2e, aug = _inputs(intrinsics, cam_to_ego, post_rots, post_trans)
    rot_ce, origin = c2e[..., :3, :3], c2e[..., :3, 3]  # ... n 3 3, ... n 3
    s = ground_z - origin[..., 2]  # ... n
    zero, one = xp.zeros_like(s), xp.ones_like(s)
    plane = xp.stack(
        [
            xp.stack([s, zero, origin[..., 0]], -1),
            xp.stack([zero, s, origin[..., 1]], -1),
            xp.stack([zero, zero, one], -1),
        ],
        -2,
    )  # ... n 3 3
    ray = _matmul(xp, rot_ce, _matmul(xp, xp.linalg.inv(k), xp.linalg.inv(aug)))  # ... n 3 3: p' -> d
    return _matmul(xp, plane, ray) / s[..., None, None]


def _pixel_lattice(image_hw: tuple[int, int], supersample: int) -> np.ndarray:
    """[s, h, w, 3] homogeneous (u, v, 1) of the sub-pixel rays, pixel centres at integers."""
    h, w = image_hw
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    dv, du = (a.reshape(-1) for a in np.meshgrid(offsets, offsets, indexing="ij"))  # s, s
    v, u = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")  # h w
    return np.stack([u + du[:, None, None], v + dv[:, None, None], np.ones((len(du), h, w))], -1)


def pixel_ground_points(
    intrinsics,
    cam_to_ego,
    image_hw: tuple[int, int],
    post_rots=None,
    post_trans=None,
    ground_z=0.0,
    supersample: int = 1,
) -> tuple[jax.Array, jax.Array]:
    """Where the ray of every (sub-)pixel meets the ground plane, ``H^-1 (u', v', 1)`` dehomogenised.

    Args:
      intrinsics, cam_to_ego, post_rots, post_trans, ground_z: as ``ground_homography``, [..., n, ...].
      image_hw: (h, w) of the (augmented) images, static.
      supersample: rays per pixel side (static); sub-pixel offsets ``(k + 0.5) / s - 0.5``.

    Returns:
      ``xy`` float32 [..., n, s, h, w, 2] ego-frame ground points (0 where there is none) and ``hit`` bool
      [..., n, s, h, w], True where the ray meets the plane in front of the camera (below the horizon).
    """
    h_inv = ground_homography_inverse(
        jnp.asarray(intrinsics), cam_to_ego, post_rots, post_trans, ground_z
    )  # ... n 3 3
    pix = jnp.asarray(_pixel_lattice(image_hw, supersample), jnp.float32)  # s h w 3
    g = jnp.einsum("...ij,shwj->...shwi", h_inv, pix, precision=_HIGHEST)  # ... n s h w 3
    inv_depth = g[..., 2]
    hit = inv_depth > 1e-6  # in front of the camera and nearer than 1e6 m
    xy = jnp.where(hit[..., None], g[..., :2] / jnp.where(hit, inv_depth, 1.0)[..., None], 0.0)
    return xy, hit


@functools.partial(jax.jit, static_argnames=("grid", "image_hw", "supersample", "return_valid"))
def bev_mask_to_camera(
    bev_mask,
    grid: BEVGrid,
    intrinsics,
    cam_to_ego,
    image_hw: tuple[int, int],
    post_rots=None,
    post_trans=None,
    ground_z=0.0,
    supersample: int = 1,
    threshold=0.5,
    return_valid: bool = False,
):
    """Back-projects BEV masks into the cameras through the flat-ground homography (PGCM reference mask).

    Each (sub-)pixel ray meets the plane ``z = ground_z`` at ``(x, y)`` (``pixel_ground_points``) and reads
    BEV cell ``(i, j) = floor(((x, y) - (x_min, y_min)) / res)``; rays above the horizon or outside the grid
    read False. A pixel is True when at least ``threshold`` of its ``supersample**2`` rays read True
    (``supersample=1``: the pixel-centre ray). Jitted, static shapes; ``grid`` (a hashable ``BEVGrid``),
    ``image_hw``, ``supersample`` and ``return_valid`` are static.

    Several masks (classes, or frames of one rig) go in one call: ``bev_mask`` [b, x, y] with cameras
    [n, ...] (shared) or [b, n, ...] (per frame) gives [b, n, h, w].

    Args:
      bev_mask: [x, y] or [b, x, y] bool (or float in [0, 1], e.g. a ``bev_labels`` channel) on ``grid``.
      grid: the BEV grid of ``bev_mask``.
      intrinsics: [n, 3, 3] or [b, n, 3, 3] pinhole matrices before augmentation.
      cam_to_ego: [n, 4, 4] or [b, n, 4, 4].
      image_hw: (h, w) of the (augmented) images.
      post_rots: optional [(b,) n, 3, 3] augmentation (``aug_pixel = post_rots @ pixel + post_trans``).
      post_trans: optional [(b,) n, 3].
      ground_z: ground height in the ego frame, metres.
      supersample: rays per pixel side.
      threshold: fraction of a pixel's rays that must read True.
      return_valid: also return which pixels see the ground inside the grid.

    Returns:
      [n, h, w] bool ([b, n, h, w] for batched inputs); with ``return_valid`` also ``valid`` bool of the
      camera shape ([(b,) n, h, w]), True where at least half of the pixel's rays meet the ground inside the
      grid (the pixels where the back-projection says something; use it as ``pgcm_score``'s ``valid``).
    """
    bev_mask = jnp.asarray(bev_mask)
    if bev_mask.ndim not in (2, 3):
        raise ValueError(f"bev_mask must be [x, y] or [b, x, y], got shape {bev_mask.shape}")
    nx, ny, _ = grid.shape
    if bev_mask.shape[-2:] != (nx, ny):
        raise ValueError(f"bev_mask {bev_mask.shape} does not match the grid's (x, y) = {(nx, ny)}")
    xy, hit = pixel_ground_points(
        intrinsics, cam_to_ego, image_hw, post_rots, post_trans, ground_z, supersample
    )  # [b] n s h w 2, [b] n s h w
    lower = jnp.asarray([grid.xbound[0], grid.ybound[0]], jnp.float32)
    res = jnp.asarray([grid.xbound[2], grid.ybound[2]], jnp.float32)
    cells = (xy - lower) / res  # [b] n s h w 2
    inside = hit & jnp.all((cells >= 0) & (cells < jnp.asarray([nx, ny], jnp.float32)), -1)  # [b] n s h w
    ij = jnp.where(inside[..., None], jnp.floor(cells), 0).astype(jnp.int32)
    flat = ij[..., 0] * ny + ij[..., 1]  # [b] n s h w
    values = bev_mask.astype(jnp.float32).reshape(bev_mask.shape[:-2] + (nx * ny,))  # [b] (x y)
    if values.ndim == 2 and flat.ndim == 4:  # per-mask batch, shared cameras
        flat = jnp.broadcast_to(flat, (values.shape[0],) + flat.shape)
    if values.ndim == 1 and flat.ndim == 5:  # one mask, per-frame cameras
        values = jnp.broadcast_to(values, (flat.shape[0],) + values.shape)
    if values.ndim == 2 and values.shape[0] != flat.shape[0]:
        raise ValueError(f"bev_mask batch {values.shape[0]} and camera batch {flat.shape[0]} differ")
    if values.ndim == 1:
        read = values[flat]  # n s h w
    else:
        read = jnp.take_along_axis(values, flat.reshape(flat.shape[0], -1), axis=1).reshape(flat.shape)
    coverage = jnp.mean(jnp.where(inside, read, 0.0), axis=-3)  # [b] n h w
    mask = coverage >= jnp.maximum(threshold, 1e-6)  # a pixel with no True ray is never True
    if not return_valid:
        return mask
    return mask, jnp.mean(inside.astype(jnp.float32), axis=-3) >= 0.5  # [b] n h w, the cameras' shape


def pgcm_score(predicted, backprojected, valid=None):
    """PGCM consistency ``R = |P & B| / |P | B|`` of a frame over all its cameras (NRSeg's IoU score).

    Pixels where ``valid`` is False count in neither set. ``R = 1`` when the union is empty (neither mask has
    a pixel: nothing disagrees). NumPy for NumPy inputs (float64), ``jnp`` (float32; jit-able) for JAX ones.

    Args:
      predicted: [..., n, h, w] bool, the PV segmenter's mask (e.g. road) on the frame's images.
      backprojected: [..., n, h, w] bool, ``bev_mask_to_camera`` of the BEV ground truth.
      valid: optional bool broadcastable to [..., n, h, w], e.g. the ``valid`` of ``bev_mask_to_camera``
        (pixels that see the ground inside the BEV grid).

    Returns:
      R [...] in [0, 1], one per frame.
    """
    xp = _xp(predicted, backprojected, valid)
    p, b = xp.asarray(predicted).astype(bool), xp.asarray(backprojected).astype(bool)
    if valid is not None:
        v = xp.asarray(valid).astype(bool)
        p, b = p & v, b & v
    inter = xp.sum(p & b, axis=(-3, -2, -1))
    union = xp.sum(p | b, axis=(-3, -2, -1))
    dtype = xp.float32 if xp is jnp else np.float64
    return xp.where(union > 0, inter.astype(dtype) / xp.maximum(union, 1).astype(dtype), xp.ones((), dtype))


def pgcm_weight(score, tau=PGCM_TAU["default"]):
    """NRSeg's sample weight ``w = 1 if R > tau else R`` (``where(R > tau, 1, R)``), elementwise.

    ``tau = 1`` (dry -> rain) weights every frame by its R. Real (non-synthetic) frames get ``w = 1`` outside
    this function.
    """
    xp = _xp(score, tau)
    score = xp.asarray(score)
    return xp.where(score > tau, xp.ones_like(score), score)
