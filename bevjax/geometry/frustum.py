"""The lift-splat-shoot frustum: one 3D point per (depth bin, feature pixel) of each camera.

Follows nv-tlabs/lift-splat-shoot ``src/models.py`` (``LiftSplatShoot.create_frustum`` and
``LiftSplatShoot.get_geometry``) exactly:

- ``create_frustum`` lays a ``[d, fh, fw]`` lattice of (u, v, depth) over the *network input* image (the
  augmented image, after resize / crop): ``u = linspace(0, W - 1, fw)``, ``v = linspace(0, H - 1, fh)``,
  ``depth = arange(*dbound)``, with ``fh, fw = H // downsample, W // downsample``. Pixel centres are at integer
  coordinates (``bevjax.schema``), so the corner feature pixels sit on the corner image pixels.
- ``frustum_to_ego`` maps every frustum point of every camera into the ego frame::

      p_img = inv(post_rots) @ ((u, v, depth) - post_trans)     # undo the image augmentation
      p_cam = inv(K) @ (u' * depth, v' * depth, depth)          # unproject (OpenCV camera frame)
      p_ego = R @ p_cam + t                                     # (R, t) = cam_to_ego

  which is LSS ``get_geometry(rots, trans, intrins, post_rots, post_trans)`` with ``rots, trans`` the rotation
  and translation of ``cam_to_ego``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST


def create_frustum(
    image_size: tuple[int, int],
    downsample: int,
    dbound: tuple[float, float, float],
) -> np.ndarray:
    """The LSS frustum of (u, v, depth) points over the network input image.

    LSS ``create_frustum``: ``xs = linspace(0, W - 1, fW)``, ``ys = linspace(0, H - 1, fH)``,
    ``ds = arange(*dbound)``, ``frustum = stack((xs, ys, ds), -1)`` broadcast to ``[D, fH, fW, 3]``.

    Args:
      image_size: (H, W) of the (augmented) images the network sees, pixels.
      downsample: stride of the image features; ``fh = H // downsample``, ``fw = W // downsample``.
      dbound: (min, max, step) of the depth bins in metres; depths are ``arange(min, max, step)``.

    Returns:
      float32 array [d, fh, fw, 3] of (u, v, depth): pixel coordinates of the feature pixel in the input
      image (pixel centres at integers) and the depth (camera z, metres) of the bin.
    """
    height, width = image_size
    fh, fw = height // downsample, width // downsample
    if fh < 1 or fw < 1:
        raise ValueError(f"image_size={image_size} with downsample={downsample} leaves no feature pixel")
    depths = np.arange(*dbound, dtype=np.float64)
    if depths.size == 0:
        raise ValueError(f"dbound={dbound} gives no depth bin")
    us = np.linspace(0.0, width - 1, fw)
    vs = np.linspace(0.0, height - 1, fh)
    grid = np.meshgrid(us, vs, depths, indexing="xy")  # 3 x [fh fw d]
    frustum = np.stack(grid, -1).transpose(2, 0, 1, 3)  # [fh fw d 3] -> [d fh fw 3]
    return frustum.astype(np.float32)


def frustum_to_ego(
    frustum,
    intrinsics,
    cam_to_ego,
    post_rots,
    post_trans,
) -> jax.Array:
    """Ego-frame coordinates of every frustum point of every camera (LSS ``get_geometry``).

    LSS::

        points = inv(post_rots) @ (frustum - post_trans)
        points = cat(points[..., :2] * points[..., 2:3], points[..., 2:3])
        points = (rots @ inv(intrins)) @ points + trans

    Jit-able; matrix products run at ``Precision.HIGHEST`` so the geometry stays float32-exact on accelerators.

    Args:
      frustum: [d, fh, fw, 3] (u, v, depth) of ``create_frustum``, in augmented-image pixels.
      intrinsics: [b, n, 3, 3] pinhole matrices K of the images before augmentation.
      cam_to_ego: [b, n, 4, 4] camera -> ego rigid transforms.
      post_rots: [b, n, 3, 3] image augmentation, ``aug_pixel = post_rots @ pixel + post_trans``.
      post_trans: [b, n, 3] (see ``post_rots``).

    Returns:
      [b, n, d, fh, fw, 3] ego-frame (x, y, z) of every frustum point, metres.
    """
    frustum = jnp.asarray(frustum)
    intrinsics, cam_to_ego = jnp.asarray(intrinsics), jnp.asarray(cam_to_ego)
    post_rots, post_trans = jnp.asarray(post_rots), jnp.asarray(post_trans)

    # Undo the augmentation: pixel = inv(post_rots) @ (aug_pixel - post_trans).
    points = frustum[None, None] - post_trans[:, :, None, None, None, :]  # b n d h w 3
    points = jnp.einsum(
        "bnij,bndhwj->bndhwi", jnp.linalg.inv(post_rots), points, precision=_HIGHEST
    )  # b n d h w 3
    # (u, v, z) -> (u z, v z, z): homogeneous pixel scaled by depth.
    points = jnp.concatenate([points[..., :2] * points[..., 2:3], points[..., 2:3]], -1)  # b n d h w 3
    # Unproject with inv(K) and rotate into ego in one matrix, then translate.
    combine = jnp.einsum(
        "bnij,bnjk->bnik", cam_to_ego[..., :3, :3], jnp.linalg.inv(intrinsics), precision=_HIGHEST
    )  # b n 3 3
    points = jnp.einsum("bnij,bndhwj->bndhwi", combine, points, precision=_HIGHEST)  # b n d h w 3
    return points + cam_to_ego[:, :, None, None, None, :3, 3]  # b n d h w 3
