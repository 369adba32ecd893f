"""Grain transforms of one unbatched example (a dict of NumPy arrays keyed as in ``bevjax.schema``).

Every transform returns a new dict and leaves its input untouched; a key that an example lacks is skipped, so
the transforms work on examples without LiDAR, depth or perspective labels.

- :class:`ImageAug`: lift-splat-shoot per-camera resize / crop / flip / rotate, recorded in ``post_rots`` and
  ``post_trans`` (``aug_pixel = post_rots @ pixel + post_trans``); the intrinsics keep describing the stored image.
- :class:`BEVFlip`: mirrors the whole scene about the ego x axis (y -> -y): images, calibration, BEV rasters, LiDAR
  and poses change together so that the mirrored example is again a consistent scene.
- :class:`ColorJitter`: brightness / contrast / saturation / hue jitter per camera (uint8 in and out).
- :class:`SelectCameras`: keeps a subset of the cameras (LSS drops one of six at random in training).

A typical training pipeline is ``SelectCameras -> BEVFlip -> ImageAug -> ColorJitter``: :class:`BEVFlip` must
come before :class:`ImageAug` because it mirrors the stored images and intrinsics, which is only consistent with
identity ``post_rots`` (it raises ``ValueError`` otherwise).

Pixel convention (``bevjax.schema``): pixel centres lie at integer coordinates, so an image of width ``w`` covers
the continuous range ``[-0.5, w - 0.5]`` and its horizontal mirror maps ``u -> w - 1 - u``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import grain
import numpy as np
from PIL import Image

from bevjax.geometry.grid import BEVGrid

# Keys with a leading camera dimension n.
PER_CAMERA_KEYS: tuple[str, ...] = (
    "images",
    "intrinsics",
    "cam_to_ego",
    "post_rots",
    "post_trans",
    "pv_labels",
    "depth",
)
# Per-camera rasters [n, h, w, ...] that live on the image grid.
IMAGE_GRID_KEYS: tuple[str, ...] = ("images", "pv_labels", "depth")

# ImageAug downsamples in two steps (antialiased resize, then the residual affine) below this scale factor.
_ANTIALIAS_BELOW = 0.75

# Mirror of ego points (y -> -y) and of camera points (x -> -x), homogeneous.
_S_EGO = np.diag([1.0, -1.0, 1.0, 1.0])
_S_CAM = np.diag([-1.0, 1.0, 1.0, 1.0])


def _check_range(name: str, lim: Sequence[float]) -> None:
    if len(lim) != 2 or not lim[0] <= lim[1]:
        raise ValueError(f"{name}={tuple(lim)}: need a (lo, hi) pair with lo <= hi")


def _image_hw(element: dict, where: str) -> tuple[int, int, int]:
    """(n, h, w) of the per-camera image rasters of ``element``; raises ValueError if there are none."""
    for key in IMAGE_GRID_KEYS:
        if key in element:
            n, h, w = np.shape(element[key])[:3]
            return int(n), int(h), int(w)
    raise ValueError(f"{where}: the example has none of {IMAGE_GRID_KEYS}, so the image size is unknown")


# ----------------------------------------------------------------------------------------------------------------
# ImageAug
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AugParams:
    """The augmentation of one camera image, in the order it is applied.

    Attributes:
      resize: scale factor of the whole image (continuous extent ``[-0.5, w - 0.5]`` -> ``[-0.5, r w - 0.5]``).
      crop: (left, top) integer offset of the output window in the resized image; may be negative (zero padding).
      flip: mirror the cropped window horizontally (``u -> final_w - 1 - u``).
      rotate_deg: rotation about the centre ``((final_w - 1) / 2, (final_h - 1) / 2)`` of the window, degrees,
        positive counter-clockwise as displayed (PIL ``Image.rotate`` and LSS ``get_rot`` convention).
    """

    resize: float
    crop: tuple[int, int]
    flip: bool
    rotate_deg: float


def aug_affine(params: AugParams, final_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The 2D affine ``aug_pixel = A @ pixel + b`` of one camera's augmentation (pixel centres at integers).

    Args:
      params: the sampled augmentation.
      final_hw: (h, w) of the output image.

    Returns:
      ``A`` [2, 2] and ``b`` [2], float64.
    """
    fh, fw = final_hw
    r = float(params.resize)
    # Resize: the continuous image extent scales about its corner -0.5, so centres map r u + (r - 1) / 2.
    a = np.eye(2) * r
    b = np.full(2, 0.5 * (r - 1.0)) - np.asarray(params.crop, np.float64)
    if params.flip:
        mirror = np.diag([-1.0, 1.0])
        a, b = mirror @ a, mirror @ b + np.array([fw - 1.0, 0.0])
    theta = math.radians(float(params.rotate_deg))
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, s], [-s, c]])  # counter-clockwise as displayed, the image y axis pointing down
    centre = np.array([(fw - 1.0) / 2.0, (fh - 1.0) / 2.0])
    a, b = rot @ a, rot @ (b - centre) + centre
    return a, b


def _embed(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3x3 embedding [.., 3, 3] of 2x2 matrices and [.., 3] of 2-vectors (LSS ``post_rots`` / ``post_trans``)."""
    a3 = np.zeros(a.shape[:-2] + (3, 3))
    a3[..., :2, :2] = a
    a3[..., 2, 2] = 1.0
    b3 = np.zeros(b.shape[:-1] + (3,))
    b3[..., :2] = b
    return a3, b3


def warp_image(
    image: np.ndarray, a: np.ndarray, b: np.ndarray, out_hw: tuple[int, int], antialias: bool = True
) -> np.ndarray:
    """Resamples an image under ``out_pixel = a @ pixel + b`` (bilinear; zero outside the source).

    Each channel is resampled in floating point with PIL (mode "F") and rounded once at the end (PIL's 8-bit
    bilinear transform truncates, which would darken images by half a level). When the affine shrinks the image
    by more than ``_ANTIALIAS_BELOW`` and ``antialias`` is set, the image is first resized with PIL's antialiasing
    filter to about the target scale and the remaining (near rigid) affine is applied to the result, so that the
    geometry is exactly ``(a, b)`` either way.

    Args:
      image: [h, w] or [h, w, c] image, uint8 (rounded and clipped on output) or float.
      a: [2, 2] affine matrix.
      b: [2] affine offset.
      out_hw: (h', w') of the output.
      antialias: allow the antialiased two-step path.

    Returns:
      [h', w'] or [h', w', c] image of the input dtype.
    """
    image = np.asarray(image)
    h, w = image.shape[:2]
    fh, fw = out_hw
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    chans = image.reshape(h, w, -1).astype(np.float32)  # [h, w, c]
    planes = [Image.fromarray(np.ascontiguousarray(chans[..., i]), "F") for i in range(chans.shape[-1])]
    scale = math.sqrt(abs(float(np.linalg.det(a))))
    if antialias and scale < _ANTIALIAS_BELOW:
        h1, w1 = max(1, round(h * scale)), max(1, round(w * scale))
        planes = [p.resize((w1, h1), Image.Resampling.BILINEAR) for p in planes]
        # PIL resize maps centres p1 = d p0 + (d - 1) / 2 with d = (w1 / w, h1 / h); fold its inverse into (a, b).
        d = np.array([w1 / w, h1 / h])
        a = a / d[None, :]
        b = b - a @ (0.5 * (d - 1.0))
    a_inv = np.linalg.inv(a)
    c = -a_inv @ b
    # PIL samples output pixel (x, y) at (x + 0.5, y + 0.5) in corner coordinates: shift both sides by 0.5.
    off = c + 0.5 - a_inv @ np.array([0.5, 0.5])
    coeffs = (a_inv[0, 0], a_inv[0, 1], off[0], a_inv[1, 0], a_inv[1, 1], off[1])
    warped = [
        p.transform(
            (fw, fh), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR, fillcolor=0.0
        )
        for p in planes
    ]
    out = np.stack([np.asarray(p, np.float32) for p in warped], -1)  # [h', w', c]
    if image.dtype == np.uint8:
        out = np.clip(np.rint(out), 0, 255)
    return out.astype(image.dtype).reshape((fh, fw) + image.shape[2:])


def nearest_source(
    a: np.ndarray, b: np.ndarray, src_hw: tuple[int, int], out_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest source pixel of every output pixel under ``out_pixel = a @ pixel + b``.

    Args:
      a: [2, 2] affine matrix.
      b: [2] affine offset.
      src_hw: (h, w) of the source raster.
      out_hw: (h', w') of the output raster.

    Returns:
      Row and column indices [h', w'] (int64, clipped into the source) and a mask [h', w'] of output pixels whose
      nearest source pixel exists (the source point lies in ``[-0.5, w - 0.5) x [-0.5, h - 0.5)``).
    """
    h, w = src_hw
    fh, fw = out_hw
    v, u = np.mgrid[0:fh, 0:fw].astype(np.float64)  # [h', w'] each
    a_inv = np.linalg.inv(np.asarray(a, np.float64))
    du, dv = u - b[0], v - b[1]
    src_u = a_inv[0, 0] * du + a_inv[0, 1] * dv
    src_v = a_inv[1, 0] * du + a_inv[1, 1] * dv
    iu = np.floor(src_u + 0.5).astype(np.int64)
    iv = np.floor(src_v + 0.5).astype(np.int64)
    inside = (iu >= 0) & (iu < w) & (iv >= 0) & (iv < h)
    return np.clip(iv, 0, h - 1), np.clip(iu, 0, w - 1), inside


def apply_image_aug(
    element: dict, params: Sequence[AugParams], final_hw: tuple[int, int], antialias: bool = True
) -> dict:
    """Applies one :class:`AugParams` per camera to the image rasters and composes ``post_rots`` / ``post_trans``.

    Images are resampled bilinearly, ``pv_labels`` and ``depth`` by nearest neighbour with the same affine (so they
    stay aligned with the image); output pixels without a source pixel are 0. Depth values are unchanged (a 2D
    image transform does not move points along the camera z axis). The intrinsics are left as they are.

    Args:
      element: one example; needs at least one of ``images``, ``pv_labels``, ``depth``.
      params: n augmentations, one per camera.
      final_hw: (h', w') of the output rasters.
      antialias: see :func:`warp_image`.

    Returns:
      A new example dict with rasters of size ``final_hw`` and float32 ``post_rots`` [n, 3, 3], ``post_trans``
      [n, 3]: ``new_post_rots = A3 @ old_post_rots``, ``new_post_trans = A3 @ old_post_trans + b3``.
    """
    n, h, w = _image_hw(element, "ImageAug")
    if len(params) != n:
        raise ValueError(f"ImageAug: {len(params)} augmentations for {n} cameras")
    final_hw = (int(final_hw[0]), int(final_hw[1]))
    affines = [aug_affine(p, final_hw) for p in params]
    out = dict(element)
    if "images" in element:
        out["images"] = np.stack(
            [
                warp_image(img, a, b, final_hw, antialias)
                for img, (a, b) in zip(element["images"], affines, strict=True)
            ]
        )  # [n, h', w', 3]
    nearest_keys = [k for k in ("pv_labels", "depth") if k in element]
    if nearest_keys:
        arrays = {k: np.asarray(element[k]) for k in nearest_keys}
        warped = {k: np.zeros((n,) + final_hw + arrays[k].shape[3:], arrays[k].dtype) for k in nearest_keys}
        for i, (a, b) in enumerate(affines):
            iv, iu, inside = nearest_source(a, b, (h, w), final_hw)  # [h', w'] each
            for k in nearest_keys:
                warped[k][i][inside] = arrays[k][i][iv[inside], iu[inside]]
        out.update(warped)
    a3, b3 = _embed(np.stack([a for a, _ in affines]), np.stack([b for _, b in affines]))  # [n, 3, 3], [n, 3]
    old_rots = np.asarray(element.get("post_rots", np.broadcast_to(np.eye(3), (n, 3, 3))), np.float64)
    old_trans = np.asarray(element.get("post_trans", np.zeros((n, 3))), np.float64)
    out["post_rots"] = (a3 @ old_rots).astype(np.float32)
    out["post_trans"] = (np.einsum("nij,nj->ni", a3, old_trans) + b3).astype(np.float32)
    return out


@dataclasses.dataclass(frozen=True)
class ImageAug(grain.transforms.RandomMap):
    """Lift-splat-shoot image augmentation, each camera independently, exact in the pixel-centre convention.

    Per camera (source size (h, w), output ``final_hw`` = (fh, fw)), as in LSS ``sample_augmentation``:

    - train: ``r ~ U(resize_lim)``; the resized size is ``(int(h r), int(w r))``; the window top is
      ``int((1 - U(bot_pct_lim)) * new_h) - fh``, its left ``floor(U(0, new_w - fw))``; flip with probability 1/2
      if ``rand_flip``; rotation ``~ U(rot_lim_deg)`` degrees about the window centre.
    - test (``train=False``): ``r = max(fh / h, fw / w)``, top from ``mean(bot_pct_lim)``, the window centred
      horizontally, no flip and no rotation.

    Unlike LSS the window top is clipped so the window stays inside the resized image (or, for an image smaller
    than the window, the image inside the window), and all steps are composed into one affine that is applied to
    the source image once: rotated corners show image content where the source has some, zeros elsewhere.
    ``post_rots`` / ``post_trans`` record the composed affine exactly (see :func:`aug_affine`).

    Attributes:
      final_hw: (h, w) of the output images.
      resize_lim: (lo, hi) range of the resize factor (train).
      bot_pct_lim: (lo, hi) fraction of the resized height cut off at the bottom.
      rot_lim_deg: (lo, hi) rotation range in degrees (train).
      rand_flip: random horizontal flips (train).
      train: random augmentation if True, the deterministic LSS test-time resize and crop otherwise.
      antialias: antialiased two-step resampling when shrinking by more than 0.75 (see :func:`warp_image`).
    """

    final_hw: tuple[int, int] = (128, 352)
    resize_lim: tuple[float, float] = (0.193, 0.225)
    bot_pct_lim: tuple[float, float] = (0.0, 0.22)
    rot_lim_deg: tuple[float, float] = (-5.4, 5.4)
    rand_flip: bool = True
    train: bool = True
    antialias: bool = True

    def __post_init__(self):
        if len(self.final_hw) != 2 or min(self.final_hw) < 1:
            raise ValueError(f"ImageAug.final_hw={self.final_hw}: need two positive sizes")
        for name in ("resize_lim", "bot_pct_lim", "rot_lim_deg"):
            _check_range(f"ImageAug.{name}", getattr(self, name))
        if self.resize_lim[0] <= 0:
            raise ValueError(f"ImageAug.resize_lim={self.resize_lim}: need positive factors")

    def sample_params(self, src_hw: tuple[int, int], rng: np.random.Generator) -> AugParams:
        """Draws the augmentation of one camera image (draws nothing when ``train`` is False).

        Args:
          src_hw: (h, w) of the source image.
          rng: random generator.

        Returns:
          The camera's :class:`AugParams`.
        """
        h, w = src_hw
        fh, fw = self.final_hw
        if self.train:
            resize = float(rng.uniform(*self.resize_lim))
            bot_pct = float(rng.uniform(*self.bot_pct_lim))
        else:
            resize = max(fh / h, fw / w)
            bot_pct = float(np.mean(self.bot_pct_lim))
        # int() as LSS; the epsilon keeps w * (fw / w) == fw from rounding down to fw - 1.
        new_h, new_w = int(h * resize + 1e-6), int(w * resize + 1e-6)
        top = int((1.0 - bot_pct) * new_h) - fh
        top = int(np.clip(top, min(0, new_h - fh), max(0, new_h - fh)))
        if self.train:
            left = math.floor(rng.uniform(min(0, new_w - fw), max(0, new_w - fw)))
            flip = bool(rng.integers(2)) if self.rand_flip else False
            rotate = float(rng.uniform(*self.rot_lim_deg))
        else:
            left, flip, rotate = (new_w - fw) // 2, False, 0.0
        return AugParams(resize=resize, crop=(int(left), top), flip=flip, rotate_deg=rotate)

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        """Augments every camera of ``element``.

        Args:
          element: one example with at least one of ``images``, ``pv_labels``, ``depth``.
          rng: random generator; the cameras' parameters are drawn in camera order with :meth:`sample_params`.

        Returns:
          A new example, see :func:`apply_image_aug`.
        """
        n, h, w = _image_hw(element, "ImageAug")
        params = [self.sample_params((h, w), rng) for _ in range(n)]
        return apply_image_aug(element, params, self.final_hw, self.antialias)


# ----------------------------------------------------------------------------------------------------------------
# BEVFlip
# ----------------------------------------------------------------------------------------------------------------


def mirror_example(element: dict) -> dict:
    """Mirrors the scene of ``element`` about the ego x axis (ego y -> -y), keeping it a consistent example.

    Let ``S_e = diag(1, -1, 1, 1)`` mirror ego points and ``S_c = diag(-1, 1, 1, 1)`` mirror camera points. The
    mirrored scene holds the points ``P' = S_e P`` and the camera ``T' = S_e T S_c`` (``T = cam_to_ego``); its
    rotation ``S_e R S_c`` has determinant (-1)(+1)(-1) = +1, so it is a proper camera pose, centred at the mirrored
    camera centre ``S_e t``. Since both mirrors are their own inverses, the mirrored point in the mirrored camera is

        X' = T'^-1 P' = S_c T^-1 S_e S_e P = S_c X = (-x, y, z),

    the same depth z with x negated. With ``K' = F K diag(-1, 1, 1)`` and ``F = [[-1, 0, w - 1], [0, 1, 0],
    [0, 0, 1]]`` (i.e. ``cx -> w - 1 - cx``, skew negated, focal lengths and ``cy`` kept):

        K' X' = F K diag(-1, 1, 1) diag(-1, 1, 1) X = F (K X),

    so after the division by z the pixel is ``(w - 1 - u, v)``: the horizontal mirror of the pixel where the
    original point projected. Hence the images (and ``pv_labels``, ``depth``, whose z-depth is unchanged) are
    flipped horizontally. BEV rasters flip along y (axis 1; cell j and cell ny - 1 - j have mirrored centres when
    the grid is symmetric about y = 0), LiDAR points and flow negate y (``S_e (p + f) = S_e p + S_e f`` keeps the
    flow convention), and the poses conjugate: ``next_ego_from_ego -> S_e T S_e``, ``ego_to_world -> S_e T S_e``
    (the world is mirrored too, which keeps the transforms proper rotations).

    Args:
      element: one example; ``post_rots`` / ``post_trans``, if present, must be identity / zero (mirror before
        :class:`ImageAug`), and intrinsics need one of ``images``, ``pv_labels``, ``depth`` for the image width.

    Returns:
      The mirrored example (a new dict; keys it does not know are copied unchanged).

    Raises:
      ValueError: if the example carries image augmentations, or intrinsics without an image raster.
    """
    if "post_rots" in element and not np.allclose(element["post_rots"], np.eye(3), atol=1e-6):
        raise ValueError("BEVFlip: post_rots must be identity; apply BEVFlip before ImageAug")
    if "post_trans" in element and not np.allclose(element["post_trans"], 0.0, atol=1e-6):
        raise ValueError("BEVFlip: post_trans must be zero; apply BEVFlip before ImageAug")
    out = dict(element)
    for key in IMAGE_GRID_KEYS:
        if key in element:
            out[key] = np.ascontiguousarray(np.asarray(element[key])[:, :, ::-1])  # [n, h, w, ...] flip w
    if "intrinsics" in element:
        _, _, w = _image_hw(element, "BEVFlip intrinsics")
        k = np.asarray(element["intrinsics"])
        f = np.array([[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        out["intrinsics"] = (f @ k.astype(np.float64) @ np.diag([-1.0, 1.0, 1.0])).astype(k.dtype)
    if "cam_to_ego" in element:
        t = np.asarray(element["cam_to_ego"])
        out["cam_to_ego"] = (_S_EGO @ t.astype(np.float64) @ _S_CAM).astype(t.dtype)
    for key in ("next_ego_from_ego", "ego_to_world"):
        if key in element:
            t = np.asarray(element[key])
            out[key] = (_S_EGO @ t.astype(np.float64) @ _S_EGO).astype(t.dtype)
    for key in ("bev_labels", "bev_visibility"):
        if key in element:
            out[key] = np.ascontiguousarray(np.asarray(element[key])[:, ::-1])  # [x, y, ...] flip y
    for key in ("lidar_points", "lidar_flow", "next_lidar_points"):
        if key in element:
            pts = np.array(element[key], copy=True)  # [p, 3]
            pts[..., 1] = -pts[..., 1]
            out[key] = pts
    return out


@dataclasses.dataclass(frozen=True)
class BEVFlip(grain.transforms.RandomMap):
    """With probability ``p``, mirrors the scene left-right about the ego x axis (see :func:`mirror_example`).

    Must run before :class:`ImageAug` (it needs identity ``post_rots``); BEV rasters are flipped along y, which
    requires a grid symmetric about y = 0 (the default grid is; pass ``grid`` to have that checked).

    Attributes:
      p: probability of mirroring an example.
      grid: optional BEV grid of the labels, checked to be symmetric about y = 0.
    """

    p: float = 0.5
    grid: BEVGrid | None = None

    def __post_init__(self):
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"BEVFlip.p={self.p}: need a probability in [0, 1]")
        if self.grid is not None:
            lo, hi, step = self.grid.ybound
            if abs(lo + hi) > 1e-6 * max(1.0, step):
                raise ValueError(f"BEVFlip: grid ybound={self.grid.ybound} is not symmetric about y = 0")

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        """Mirrors ``element`` with probability ``p`` (one uniform draw from ``rng``).

        Args:
          element: one example.
          rng: random generator.

        Returns:
          The mirrored example, or a copy of ``element``.
        """
        flip = rng.random() < self.p
        return mirror_example(element) if flip else dict(element)


# ----------------------------------------------------------------------------------------------------------------
# ColorJitter
# ----------------------------------------------------------------------------------------------------------------

_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as PIL "L" and torchvision
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def hue_matrix(shift: float) -> np.ndarray:
    """[3, 3] RGB matrix that rotates the chroma (the I-Q plane of YIQ) by ``shift`` turns, keeping luma.

    A linear approximation of an HSV hue shift by ``360 * shift`` degrees.

    Args:
      shift: hue shift in turns.

    Returns:
      [3, 3] float64 matrix M, applied as ``rgb' = M @ rgb``.
    """
    c, s = math.cos(2 * math.pi * shift), math.sin(2 * math.pi * shift)
    rot = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    return np.linalg.inv(_RGB_TO_YIQ) @ rot @ _RGB_TO_YIQ


def jitter_image(
    image: np.ndarray, brightness: float, contrast: float, saturation: float, hue: float
) -> np.ndarray:
    """Applies brightness, contrast, saturation and hue changes to one image, in that order.

    Each step clips to [0, 255]; a factor of exactly 1 (or a hue shift of 0) skips its step.

    Args:
      image: [h, w, 3] uint8 RGB.
      brightness: factor multiplying all channels.
      contrast: factor blending from the mean grey level (0 gives a flat grey image).
      saturation: factor blending from the per-pixel grey level (0 gives a greyscale image).
      hue: hue shift in turns (see :func:`hue_matrix`).

    Returns:
      [h, w, 3] uint8.
    """
    img = np.asarray(image, np.float32)
    if brightness != 1.0:
        img = np.clip(img * brightness, 0.0, 255.0)
    if contrast != 1.0:
        mean = float((img @ _LUMA.astype(np.float32)).mean())
        img = np.clip((img - mean) * contrast + mean, 0.0, 255.0)
    if saturation != 1.0:
        grey = (img @ _LUMA.astype(np.float32))[..., None]  # [h, w, 1]
        img = np.clip((img - grey) * saturation + grey, 0.0, 255.0)
    if hue != 0.0:
        img = np.clip(img @ hue_matrix(hue).T.astype(np.float32), 0.0, 255.0)
    return np.rint(img).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class ColorJitter(grain.transforms.RandomMap):
    """Photometric jitter of ``images``, factors drawn independently per camera (uint8 in and out).

    Attributes:
      brightness: (lo, hi) range of the brightness factor (1 keeps the image).
      contrast: (lo, hi) range of the contrast factor.
      saturation: (lo, hi) range of the saturation factor.
      hue: (lo, hi) range of the hue shift in turns (0 keeps the image; torchvision allows [-0.5, 0.5]).
    """

    brightness: tuple[float, float] = (0.8, 1.2)
    contrast: tuple[float, float] = (0.8, 1.2)
    saturation: tuple[float, float] = (0.8, 1.2)
    hue: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self):
        for name in ("brightness", "contrast", "saturation", "hue"):
            _check_range(f"ColorJitter.{name}", getattr(self, name))
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name)[0] < 0:
                raise ValueError(f"ColorJitter.{name}={getattr(self, name)}: need non-negative factors")

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        """Jitters every camera image (four uniform draws per camera, also for degenerate ranges).

        Args:
          element: one example; returned as a copy if it has no ``images``.
          rng: random generator.

        Returns:
          A new example with jittered ``images`` [n, h, w, 3] uint8.
        """
        out = dict(element)
        if "images" not in element:
            return out
        images = np.asarray(element["images"])
        jittered = []
        for img in images:
            factors = [
                float(rng.uniform(*lim))
                for lim in (self.brightness, self.contrast, self.saturation, self.hue)
            ]
            jittered.append(jitter_image(img, *factors))
        out["images"] = np.stack(jittered).astype(np.uint8)  # [n, h, w, 3]
        return out


# ----------------------------------------------------------------------------------------------------------------
# SelectCameras
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SelectCameras(grain.transforms.RandomMap):
    """Keeps ``num`` of the n cameras, slicing every per-camera key (:data:`PER_CAMERA_KEYS`) the same way.

    In training a random subset is kept (in rig order), otherwise the first ``num`` cameras. ``bev_visibility``
    is not recomputed: it still marks cells seen by any of the original cameras.

    Attributes:
      num: number of cameras to keep.
      train: random subset if True, the first ``num`` otherwise.
    """

    num: int = 5
    train: bool = True

    def __post_init__(self):
        if self.num < 1:
            raise ValueError(f"SelectCameras.num={self.num}: need at least one camera")

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        """Selects the cameras.

        Args:
          element: one example.
          rng: random generator (one draw in training).

        Returns:
          A new example whose per-camera keys have a leading dimension ``num``.

        Raises:
          ValueError: if the per-camera keys disagree on n, or n < ``num``.
        """
        counts = {k: int(np.shape(element[k])[0]) for k in PER_CAMERA_KEYS if k in element}
        out = dict(element)
        if not counts:
            return out
        if len(set(counts.values())) > 1:
            raise ValueError(f"SelectCameras: per-camera keys disagree on the camera count: {counts}")
        n = next(iter(counts.values()))
        if n < self.num:
            raise ValueError(f"SelectCameras: cannot keep {self.num} of {n} cameras")
        if self.train:
            keep = np.sort(rng.choice(n, self.num, replace=False))
        else:
            keep = np.arange(self.num)
        for key in counts:
            out[key] = np.asarray(element[key])[keep]
        return out


@dataclasses.dataclass(frozen=True)
class PerFrame(grain.transforms.RandomMap):
    """Applies a single-example transform to every frame of a window (arrays ``[t, ...]``).

    All frames get the same random draws (the generator is re-seeded identically for each frame), so a window
    is augmented consistently through time, as temporal BEV models expect. :func:`bevjax.data.pipeline.make_dataset`
    wraps transforms in ``PerFrame`` when it yields windows.

    Args:
      transform: a ``grain.transforms.RandomMap`` / ``Map`` or a one-argument callable of one example.
    """

    transform: object

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        """Returns the window with ``transform`` applied to each of its ``t`` frames."""
        t = len(next(iter(element.values())))
        seed = int(rng.integers(1 << 62))
        frames = []
        for i in range(t):
            frame = {k: np.asarray(v)[i] for k, v in element.items()}  # strip the t axis
            if hasattr(self.transform, "random_map"):
                frames.append(self.transform.random_map(frame, np.random.default_rng(seed)))
            elif hasattr(self.transform, "map"):
                frames.append(self.transform.map(frame))
            else:
                frames.append(self.transform(frame))
        return {k: np.stack([f[k] for f in frames]) for k in frames[0]}  # t ...
