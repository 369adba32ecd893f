"""The NRSeg model (noise-resilient BEV segmentation, METHODS.md section 2), composed from the LSS parts.

Per frame of a ``[b, t, ...]`` window (all ``b t`` frames at once, folded into the batch)::

    images [b t n h w 3] -> CamEncoder (EfficientNet-B0, reductions 5+4+3, stride 8)      camencode
        -> 1x1 conv to D + C: depth logits [.. d], context [.. c]
        -> lift: softmax_d(depth) x context [b t n d h/8 w/8 c]
        -> splat (sum pooling, z folded into channels) -> x_t [b t x y z*c]              (lss.py, ops/splat.py)
        context -> PV decoder -> pv_logits [b t n h/s w/s 6]                             pvdecode
    x_t -> StreamingFusion over t (warp f_{t-1} into frame t, ConvGRU) -> f_t [b t x y z*c]   fusion
    f_t -> BevEncoder (ResNet-18 layers 1-3 + Up, LSS BevEncode) -> [b t x y 128]          bevencode
        -> BiDPPHead: per-class logits [b t x y k], per-cluster Dirichlet alpha [b t x y K_C]   bidpp

Design choices:

- **Fusion position**: on the splatted feature, *before* the BEV encoder, as the NRSeg code does
  (``LSS_stream_model.py``: ``update_bev_feature(x_bev_init)`` then ``bevencode``; the ConvGRU has ``camC = 64``
  channels). The recurrent state is then the cheap ``z*c``-channel lift-splat map, the BEV encoder sees a
  temporally completed map, and ``bev_feature`` (the fused ``f_t``) is the feature of the Mean Teacher's
  BEV-feature consistency. NRSeg's temporal L1 compares the warped ``f_{t-1}`` (``warped_prev``) with the
  current *unfused* ``x_t`` (``trans_loss(warped_feat, curr_bev_feats)``), returned as ``aux['bev_splat']``.
  ``temporal=False`` bypasses the fusion (``f_t = x_t``): the model is then LSS (stride 8) with a PV decoder
  and BiDPP heads.
- **PV decoder** (``PVDecoder``): on the *context* channels of the depth net output, as NRSeg's
  ``decoder_pv(conc(pv_fea))``: a 1x1 projection to 128 channels, a ConvBNReLU (64) at stride 8, then one x2
  stage (bilinear upsampling with aligned corners, ConvBNReLU, channels halved down to 16) per factor of 2 down
  to ``pv_stride``, then a 1x1 conv to ``num_pv_classes`` logits. ``pv_stride=1`` (default) gives logits at the
  input size, as NRSeg's ERFNet decoder (two x2 upsampler blocks and a x2 transposed conv after stride 8), so
  the schema's ``pv_labels`` [n h w] (through :func:`to_pv_classes`) supervise it directly; 8, 4 or 2 give a
  cheaper decoder whose labels must be downsampled.
- **BEV heads**: BiDPPHead on the BevEncoder's 128-channel map. The BevEncoder keeps LSS's own 1x1 head
  (``bevencode/PointwiseConv_0``, ``k * 128 + k`` parameters) whose output is unused (XLA drops it; its
  gradient is zero): with it, LSS's parameter tree (``camencode``, ``bevencode``) is exactly a sub-tree of
  NRSeg's, so an LSS checkpoint initialises NRSeg with the identity mapping (``config.init_from``), and an
  LSS-trained head can be mapped onto ``bidpp/multinomial``.
- **Depth**: ``depth_logits`` [b t n h/8 w/8 d] channels-last (the layout of LSS's ``aux['depth']`` and of
  ``bevjax.losses.nrseg.depth_cross_entropy``), the softmax ``depth`` in ``aux``.
- **Reuse**: CamEncoder, the frustum, splat, BevEncoder, StreamingFusion and BiDPPHead are the existing
  modules, under LSS's names; ``NRSeg._lift_splat`` is the few lines of ``LSS.__call__`` that join them up to
  the splat, for ``[f, n, ...]`` frames, and ``tests/test_nrseg_model.py`` checks it against LSS with the same
  variables.
- **Windows in training**: the ``b t`` frames go through the encoders together, so in training BatchNorm
  normalises over all ``b t n`` images (``b t`` BEV maps) of the window; only the fusion runs frame by frame.

Sizes (:data:`NRSEG_GEOMETRY`, the paper's): 6 cameras 128x352, 200x200 grid at 0.5 m, D = 41 (4-45 m), C = 64.
Parameters at that size (8 BEV classes, default HLSE clusters, 6 PV classes), measured from shapes with::

    python -c "from bevjax.models.nrseg import NRSeg, param_count; print(param_count(NRSeg()))"

14,570,858 in all: camencode 9,837,029 (EfficientNet-B0 trunk 3,595,388; the stride-8 ``Up_1`` 1,862,656),
pvdecode 107,750, fusion 24,704, bevencode 4,598,408 (1,032 of them the unused LSS head), bidpp 2,967. LSS at
stride 16 with the same 8 classes has 12,599,661 (camencode 8,001,253, bevencode 4,598,408).

Streaming evaluation runs one frame at a time with :meth:`NRSeg.step` and a :class:`FusionCarry`; a window
(:meth:`NRSeg.__call__`) may also continue the carry of the previous window.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bevjax.geometry.frustum import create_frustum, frustum_to_ego
from bevjax.geometry.grid import BEVGrid
from bevjax.models.bev_encoder import BevEncoder
from bevjax.models.bidpp import BiDPPHead, HLSEConfig
from bevjax.models.layers import ConvBNReLU, PointwiseConv, check_remat, remat_module
from bevjax.models.lss import CamEncoder, LSSGeometry, normalize_images
from bevjax.models.temporal import FusionCarry, StreamingFusion, empty_carry
from bevjax.ops.splat import splat
from bevjax.schema import BEV_CLASSES, SEMANTIC_CLASSES

# The six perspective classes of NRSeg's PV decoder (METHODS.md: bg, road, car, building, sign/light, person).
PV_CLASSES: tuple[str, ...] = ("background", "road", "car", "building", "sign_light", "person")
NUM_PV_CLASSES = len(PV_CLASSES)
# bevjax.schema.SEMANTIC_CLASSES -> PV_CLASSES. "road" is the drivable surface only (what PGCM compares with
# the back-projected drivable area); sidewalk, parking (carparks, never on drivable area in the world), terrain
# and vegetation are background, as in a Cityscapes-style reduction to these six classes; "pole" (poles,
# traffic lights and signs) is sign_light.
SEMANTIC_TO_PV: dict[str, str] = {
    "background": "background",
    "road": "road",
    "sidewalk": "background",
    "parking": "background",
    "terrain": "background",
    "vehicle": "car",
    "pedestrian": "person",
    "building": "building",
    "vegetation": "background",
    "pole": "sign_light",
}
# The same as a lookup table: SEMANTIC_TO_PV_IDS[semantic id] = PV id.
SEMANTIC_TO_PV_IDS = np.array([PV_CLASSES.index(SEMANTIC_TO_PV[c]) for c in SEMANTIC_CLASSES], np.uint8)
PV_IGNORE = 255

# The schema keys NRSeg reads (``model.apply(variables, **{k: batch[k] for k in INPUT_KEYS}, train=...)``).
INPUT_KEYS = (
    "images",
    "intrinsics",
    "cam_to_ego",
    "post_rots",
    "post_trans",
    "ego_to_world",
    "sequence_start",
)

# The paper's sizes: 128x352 images, stride 8, D = 41 bins over 4-45 m, 200x200 grid at 0.5 m.
NRSEG_GEOMETRY = LSSGeometry(image_hw=(128, 352), stride=8, dbound=(4.0, 45.0, 1.0), grid=BEVGrid())
# A tiny configuration for tests and CPU smoke runs: 32x96 images (4x12 features), D = 10, 16x16 grid at 2 m.
TINY_GEOMETRY = LSSGeometry(
    image_hw=(32, 96),
    stride=8,
    dbound=(4.0, 44.0, 4.0),
    grid=BEVGrid((-16.0, 16.0, 2.0), (-16.0, 16.0, 2.0), (-10.0, 10.0, 20.0)),
)


def to_pv_classes(pv_labels):
    """Schema ``pv_labels`` (``SEMANTIC_CLASSES`` ids) -> ``PV_CLASSES`` ids, ``PV_IGNORE`` (255) out of range.

    Args:
      pv_labels: [...] integer labels, e.g. [b, t, n, h, w] (NumPy or JAX).

    Returns:
      [...] labels of the same kind (NumPy in, NumPy uint8 out; else a jnp int32 array).
    """
    table = SEMANTIC_TO_PV_IDS
    if isinstance(pv_labels, np.ndarray):
        labels = pv_labels.astype(np.int64)
        ok = (labels >= 0) & (labels < len(table))
        return np.where(ok, table[np.where(ok, labels, 0)], PV_IGNORE).astype(np.uint8)
    labels = jnp.asarray(pv_labels).astype(jnp.int32)
    ok = (labels >= 0) & (labels < len(table))
    return jnp.where(ok, jnp.asarray(table, jnp.int32)[jnp.where(ok, labels, 0)], PV_IGNORE)


class PVDecoder(nn.Module):
    """Perspective-view decoder: stride-8 context features -> per-pixel logits at ``stride`` (module docstring).

    ``x -> PointwiseConv(128) -> ConvBNReLU(64) -> [x2 bilinear, ConvBNReLU(max(64 / 2^i, 16))] * log2(8 / s)
    -> PointwiseConv(num_classes)``, i = 1 .. log2(8 / s).

    Attributes:
      num_classes: output classes (6).
      stride: output stride, 8, 4, 2 or 1 (1: the input image size).
      dtype: computation dtype (parameters and BatchNorm statistics float32); logits come out float32.
      remat: ``'blocks'`` or ``'full'`` rematerialises each ConvBNReLU stage.
    """

    num_classes: int = NUM_PV_CLASSES
    stride: int = 1
    dtype: Any = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(self, x, train: bool):
        """Decodes.

        Args:
          x: [b h/8 w/8 c] context features.
          train: batch statistics when True (pass it positionally).

        Returns:
          [b h/s w/s num_classes] float32 logits.
        """
        if self.stride not in (1, 2, 4, 8):
            raise ValueError(f"pv_stride={self.stride}: choose 8, 4, 2 or 1 (the input size)")
        stage = remat_module(ConvBNReLU, check_remat(self.remat) != "none", (2,))
        dt = self.dtype
        x = PointwiseConv(128, dtype=dt, name="proj")(x)  # b h/8 w/8 128
        x = stage(64, dtype=dt, name="ConvBNReLU_0")(x, train)  # b h/8 w/8 64
        for i in range(1, int(math.log2(8 // self.stride)) + 1):
            x = stage(max(64 >> i, 16), upsample=2, dtype=dt, name=f"ConvBNReLU_{i}")(x, train)  # b 2h 2w c'
        return PointwiseConv(self.num_classes, dtype=dt, name="classifier")(x).astype(jnp.float32)


def _fold(x):
    """[b t ...] -> [(b t) ...]."""
    return x.reshape((-1,) + x.shape[2:])


def _unfold(x, b: int, t: int):
    """[(b t) ...] -> [b t ...]."""
    return x.reshape((b, t) + x.shape[1:])


class NRSeg(nn.Module):
    """NRSeg: LSS (stride 8) + PV decoder + streaming temporal fusion + BiDPP heads (module docstring).

    ``__call__`` runs a window ``[b, t, ...]`` (or a single frame ``[b, ...]``, as ``t = 1``) and returns
    ``(outputs, aux)``:

    ===============  =====================  ====================================================================
    outputs key      shape                  meaning
    ===============  =====================  ====================================================================
    logits           [b t x y k]            multinomial head, one sigmoid per class (``hlse.classes`` order)
    alpha            {C: [b t x y K_C]}     Dirichlet concentrations per HLSE cluster (>= 1)
    pv_logits        [b t n h/s w/s 6]      PV decoder logits, ``PV_CLASSES``, s = ``pv_stride``
    depth_logits     [b t n h/8 w/8 d]      depth logits before the softmax (channels-last)
    bev_feature      [b t x y z*c]          fused BEV feature f_t (the splatted x_t when ``temporal=False``)
    warped_prev      [b t x y z*c]          f_{t-1} warped into frame t (0 where invalid)
    warped_valid     [b t x y] bool         cells the warp filled (all False at sequence starts)
    ===============  =====================  ====================================================================

    ``aux``: ``bev_splat`` [b t x y z*c] (x_t, before the fusion), ``bev_decoded`` [b t x y 128] (BevEncoder
    features), ``depth`` [b t n h/8 w/8 d] (softmax), ``carry`` (the :class:`FusionCarry` after the last frame;
    None when ``temporal=False``). Single-frame inputs give the same keys without ``t``. All float32.

    Attributes:
      hlse: BEV classes and their HLSE clusters (``k = len(hlse.classes)``); default: ``BEV_CLASSES`` with
        ``default_hlse_clusters``.
      geometry: input size, stride (must be 8), depth bins and BEV grid; default the paper's.
      context_channels: ``c``, features per depth bin (64).
      num_pv_classes: PV decoder classes (6, ``PV_CLASSES``).
      pv_stride: PV logits stride: 1 (input size, default), 2, 4 or 8.
      temporal: streaming fusion on (NRSeg) or bypassed (``bev_feature = bev_splat``).
      evidence: evidence function of the evidential head (``'softplus'``, ``'exp'``, ``'relu'``).
      drop_connect_rate: stochastic depth of the image trunk (a ``'dropout'`` rng in training).
      trunk_depth: EfficientNet depth coefficient (1.0: B0).
      dtype: computation dtype as :class:`bevjax.models.lss.LSS` (parameters, BatchNorm statistics, the lift,
        splat and all outputs float32).
      remat: ``'none'``, ``'blocks'`` or ``'full'`` as :class:`bevjax.models.lss.LSS` (``'full'``: camera
        encoder and BEV encoder rematerialised as wholes; ``'blocks'`` also covers the PV decoder's stages).
    """

    hlse: HLSEConfig = HLSEConfig(BEV_CLASSES)
    geometry: LSSGeometry = NRSEG_GEOMETRY
    context_channels: int = 64
    num_pv_classes: int = NUM_PV_CLASSES
    pv_stride: int = 1
    temporal: bool = True
    evidence: str = "softplus"
    drop_connect_rate: float = 0.2
    trunk_depth: float = 1.0
    dtype: Any = jnp.float32
    remat: str = "none"

    @property
    def num_classes(self) -> int:
        return len(self.hlse.classes)

    @property
    def bev_channels(self) -> int:
        """Channels of the splatted and fused BEV features: ``z * c``."""
        return self.geometry.grid.shape[2] * self.context_channels

    def setup(self):
        g = self.geometry
        if g.stride != 8:
            raise ValueError(f"NRSeg: geometry.stride={g.stride}; NRSeg fuses reductions 5+4+3 at stride 8")
        full = check_remat(self.remat) == "full"
        policy = jax.checkpoint_policies.nothing_saveable
        self.camencode = remat_module(CamEncoder, full, static_argnums=(2,), policy=policy)(
            g.depth_bins,
            self.context_channels,
            g.stride,
            self.drop_connect_rate,
            self.trunk_depth,
            dtype=self.dtype,
            remat=self.remat,
        )
        self.pvdecode = PVDecoder(self.num_pv_classes, self.pv_stride, dtype=self.dtype, remat=self.remat)
        if self.temporal:
            self.fusion = StreamingFusion(self.bev_channels, dtype=self.dtype)
        self.bevencode = remat_module(BevEncoder, full, static_argnums=(2,), policy=policy)(
            self.num_classes, dtype=self.dtype, remat=self.remat
        )
        self.bidpp = BiDPPHead(self.num_classes, self.hlse, self.evidence, dtype=self.dtype)

    def empty_carry(self, batch: int) -> FusionCarry:
        """A carry with no previous frame (the next frame resets), for a fixed-structure jitted :meth:`step`."""
        return empty_carry(batch, self.geometry.grid, self.bev_channels)

    def _lift_splat(self, images, intrinsics, cam_to_ego, post_rots, post_trans, train: bool) -> dict:
        """Camera encoder, lift, splat and PV decoder of ``f`` frames (LSS's ``__call__`` up to the splat).

        Args: images uint8 [f n h w 3], intrinsics [f n 3 3], cam_to_ego [f n 4 4], post_rots [f n 3 3],
        post_trans [f n 3].

        Returns: ``bev_splat`` [f x y z*c], ``pv_logits`` [f n h/s w/s p], ``depth_logits`` and ``depth``
        [f n h/8 w/8 d].
        """
        g = self.geometry
        f, n, h, w, _ = images.shape
        if (h, w) != tuple(g.image_hw):
            raise ValueError(f"images are {h}x{w} but the model was built for {g.image_hw}")
        if h % 32 or w % 32:
            raise ValueError(f"image size {h}x{w}: NRSeg needs multiples of 32 (the trunk's stride)")
        d, c = g.depth_bins, self.context_channels
        x = normalize_images(images.reshape(f * n, h, w, 3))  # (f n) h w 3
        features, depth, head = self.camencode(x, train)  # (f n) fh fw d c, (f n) fh fw d, (f n) fh fw (d c)
        fh, fw = features.shape[1:3]
        features = features.reshape(f, n, fh, fw, d, c).transpose(0, 1, 4, 2, 3, 5)  # f n d fh fw c
        frustum = create_frustum(g.image_hw, g.stride, g.dbound)  # d fh fw 3
        points = frustum_to_ego(frustum, intrinsics, cam_to_ego, post_rots, post_trans)  # f n d fh fw 3
        pv = self.pvdecode(head[..., d:], train)  # (f n) h/s w/s p
        return {
            "bev_splat": splat(features, points, g.grid),  # f x y (z c)
            "pv_logits": pv.reshape((f, n) + pv.shape[1:]),  # f n h/s w/s p
            "depth_logits": head[..., :d].reshape(f, n, fh, fw, d),  # f n fh fw d
            "depth": depth.reshape(f, n, fh, fw, d),  # f n fh fw d
        }

    def _heads(self, bev, train: bool) -> dict:
        """BEV encoder and BiDPP heads of [f x y z*c] features: logits, alpha, bev_decoded."""
        _, dec = self.bevencode(bev, train)  # LSS's own logits are unused (module docstring)
        heads = self.bidpp(dec["features"])
        return {**heads, "bev_decoded": dec["features"].astype(jnp.float32)}

    def __call__(
        self,
        images,
        intrinsics,
        cam_to_ego,
        post_rots,
        post_trans,
        ego_to_world=None,
        sequence_start=None,
        train: bool = False,
        carry: FusionCarry | None = None,
    ):
        """Runs a window of frames (or one frame).

        Args:
          images: uint8 [b t n h w 3] (or [b n h w 3]: one frame, ``t = 1``).
          intrinsics: [b t n 3 3]; cam_to_ego [b t n 4 4]; post_rots [b t n 3 3]; post_trans [b t n 3]
            (without ``t`` for one frame).
          ego_to_world: [b t 4 4] (or [b 4 4]); None only for one frame (identity: nothing to warp).
          sequence_start: [b t] (or [b]) bool or 0/1, True at a sequence's first frame; None: only the window's
            first frame starts (and without ``carry`` it resets anyway).
          train: batch statistics and drop connect (``'dropout'`` rng) when True.
          carry: the :class:`FusionCarry` of the previous window (``aux['carry']``), or None.

        Returns:
          ``(outputs, aux)`` as in the class docstring.
        """
        single = images.ndim == 5
        if single:
            images, intrinsics, cam_to_ego, post_rots, post_trans = (
                jnp.asarray(a)[:, None] for a in (images, intrinsics, cam_to_ego, post_rots, post_trans)
            )  # b 1 ...
            if ego_to_world is not None:
                ego_to_world = jnp.asarray(ego_to_world)[:, None]  # b 1 4 4
            if sequence_start is not None:
                sequence_start = jnp.asarray(sequence_start)[:, None]  # b 1
        b, t = images.shape[:2]
        if ego_to_world is None:
            if t != 1:
                raise ValueError(f"NRSeg: a window of t={t} frames needs ego_to_world [b, t, 4, 4]")
            ego_to_world = jnp.broadcast_to(jnp.eye(4, dtype=jnp.float32), (b, 1, 4, 4))
        if sequence_start is None:
            sequence_start = jnp.zeros((b, t), bool).at[:, 0].set(True)
        frames = self._lift_splat(
            *(_fold(jnp.asarray(a)) for a in (images, intrinsics, cam_to_ego, post_rots, post_trans)), train
        )  # (b t) ...
        bev = _unfold(frames["bev_splat"], b, t)  # b t x y (z c)
        if self.temporal:
            fused, faux = self.fusion(bev, ego_to_world, sequence_start, self.geometry.grid, carry)
            warped, valid, carry = faux["warped_prev"], faux["warped_valid"], faux["carry"]
        else:
            fused, warped, valid, carry = bev, jnp.zeros_like(bev), jnp.zeros(bev.shape[:-1], bool), None
        heads = self._heads(_fold(fused), train)  # (b t) ...
        heads = jax.tree.map(lambda a: _unfold(a, b, t), heads)  # b t ...
        outputs = {
            "logits": heads["logits"],
            "alpha": heads["alpha"],
            "pv_logits": _unfold(frames["pv_logits"], b, t),
            "depth_logits": _unfold(frames["depth_logits"], b, t),
            "bev_feature": fused.astype(jnp.float32),
            "warped_prev": warped.astype(jnp.float32),
            "warped_valid": valid,
        }
        aux = {"bev_splat": bev, "bev_decoded": heads["bev_decoded"], "depth": _unfold(frames["depth"], b, t)}
        if single:
            outputs, aux = jax.tree.map(lambda a: a[:, 0], (outputs, aux))  # b ...
        return outputs, {**aux, "carry": carry}

    def step(
        self,
        carry,
        images,
        intrinsics,
        cam_to_ego,
        post_rots,
        post_trans,
        ego_to_world,
        sequence_start,
        train: bool = False,
    ):
        """One frame of streaming inference: ``model.apply(variables, carry, ..., method='step')``.

        The same parameters and results as that frame in a window (:meth:`__call__`); feed ``aux['carry']``
        back into the next call. Start with ``carry=None`` or ``model.empty_carry(b)`` (the same result; the
        latter keeps one jitted signature).

        Args:
          carry: :class:`FusionCarry` of the previous frame, or None.
          images: uint8 [b n h w 3]; intrinsics [b n 3 3]; cam_to_ego [b n 4 4]; post_rots [b n 3 3];
            post_trans [b n 3].
          ego_to_world: [b 4 4] the frame's pose.
          sequence_start: [b] bool, True at a sequence's first frame.
          train: as in :meth:`__call__`.

        Returns:
          ``(outputs, aux)`` with the keys of :meth:`__call__` without ``t``; ``aux['carry']`` is the new carry.
        """
        frames = self._lift_splat(images, intrinsics, cam_to_ego, post_rots, post_trans, train)  # b ...
        bev = frames["bev_splat"]  # b x y (z c)
        if self.temporal:
            fused, faux = self.fusion.step(carry, bev, ego_to_world, sequence_start, self.geometry.grid)
            warped, valid, carry = faux["warped_prev"], faux["warped_valid"], faux["carry"]
        else:
            fused, warped, valid = bev, jnp.zeros_like(bev), jnp.zeros(bev.shape[:-1], bool)
        heads = self._heads(fused, train)
        outputs = {
            "logits": heads["logits"],
            "alpha": heads["alpha"],
            "pv_logits": frames["pv_logits"],
            "depth_logits": frames["depth_logits"],
            "bev_feature": fused.astype(jnp.float32),
            "warped_prev": warped.astype(jnp.float32),
            "warped_valid": valid,
        }
        aux = {"bev_splat": bev, "bev_decoded": heads["bev_decoded"], "depth": frames["depth"]}
        return outputs, {**aux, "carry": carry}


def nrseg_tiny(**kwargs) -> NRSeg:
    """The tiny NRSeg of the tests: :data:`TINY_GEOMETRY`, c = 16, one MBConv block per stage
    (``trunk_depth=0.1``); ``kwargs`` override any field."""
    fields = {"geometry": TINY_GEOMETRY, "context_channels": 16, "trunk_depth": 0.1}
    return NRSeg(**{**fields, **kwargs})


def param_count(model: NRSeg, cameras: int = 6) -> dict[str, int]:
    """Parameters of ``model`` per top-level module and in all (``'total'``), from shapes only (no compile).

    Args:
      model: an NRSeg.
      cameras: cameras of the example input (parameters do not depend on it).

    Returns:
      ``{module name: count, ..., 'total': count}``.
    """
    g = model.geometry
    h, w = g.image_hw
    f32 = jnp.float32
    spec = (
        jax.ShapeDtypeStruct((1, cameras, h, w, 3), jnp.uint8),
        jax.ShapeDtypeStruct((1, cameras, 3, 3), f32),
        jax.ShapeDtypeStruct((1, cameras, 4, 4), f32),
        jax.ShapeDtypeStruct((1, cameras, 3, 3), f32),
        jax.ShapeDtypeStruct((1, cameras, 3), f32),
    )
    shapes = jax.eval_shape(lambda *x: model.init(jax.random.key(0), *x), *spec)["params"]
    counts = {k: sum(math.prod(a.shape) for a in jax.tree.leaves(v)) for k, v in shapes.items()}
    return {**counts, "total": sum(counts.values())}


__all__ = [
    "INPUT_KEYS",
    "NRSEG_GEOMETRY",
    "NUM_PV_CLASSES",
    "PV_CLASSES",
    "PV_IGNORE",
    "SEMANTIC_TO_PV",
    "SEMANTIC_TO_PV_IDS",
    "TINY_GEOMETRY",
    "NRSeg",
    "PVDecoder",
    "nrseg_tiny",
    "param_count",
    "to_pv_classes",
]
