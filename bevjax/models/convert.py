"""Converting efficientnet_pytorch EfficientNet-B0 state dicts to :class:`bevjax.models.EfficientNetB0` variables.

Only local files are read; nothing is downloaded. Typical use with the ImageNet weights that
``EfficientNet.from_pretrained("efficientnet-b0")`` caches (``efficientnet-b0-355c32eb.pth``) or with a
lift-splat-shoot checkpoint (trunk under ``camencode.trunk.``)::

    sd = load_torch_state_dict("model525000.pt", prefix="camencode.trunk.")
    variables = convert_efficientnet_b0(sd)  # {'params': ..., 'batch_stats': ...}
    endpoints = EfficientNetB0().apply(variables, images, train=False)

Name mapping (``i`` the block index; conv kernels OIHW -> HWIO, depthwise ``[C, 1, k, k]`` -> ``[k, k, 1, C]``;
BatchNorm ``weight``/``bias`` -> ``params`` ``scale``/``bias``, ``running_mean``/``running_var`` ->
``batch_stats`` ``mean``/``var``):

====================================  ================================
efficientnet_pytorch                  flax
====================================  ================================
``_conv_stem.weight``                 ``stem_conv/kernel``
``_bn0.*``                            ``stem_bn``
``_blocks.{i}._expand_conv.weight``   ``block_{i}/expand_conv/kernel``
``_blocks.{i}._bn0.*``                ``block_{i}/expand_bn``
``_blocks.{i}._depthwise_conv.weight``  ``block_{i}/depthwise_conv/kernel``
``_blocks.{i}._bn1.*``                ``block_{i}/depthwise_bn``
``_blocks.{i}._se_reduce.weight/bias``  ``block_{i}/se_reduce/kernel, bias``
``_blocks.{i}._se_expand.weight/bias``  ``block_{i}/se_expand/kernel, bias``
``_blocks.{i}._project_conv.weight``  ``block_{i}/project_conv/kernel``
``_blocks.{i}._bn2.*``                ``block_{i}/project_bn``
``_conv_head.weight``                 ``head_conv/kernel``
``_bn1.*``                            ``head_bn``
``_fc.*``, ``*.num_batches_tracked``  ignored
====================================  ================================
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from bevjax.models.efficientnet import HEAD_FEATURES, STEM_FEATURES, efficientnet_b0_blocks

_BN_PARAMS = (("weight", "params", "scale"), ("bias", "params", "bias"))
_BN_STATS = (("running_mean", "batch_stats", "mean"), ("running_var", "batch_stats", "var"))


@dataclasses.dataclass(frozen=True)
class _Entry:
    torch_name: str
    torch_shape: tuple[int, ...]
    collection: str  # 'params' or 'batch_stats'
    path: tuple[str, ...]  # flax module path + leaf name
    is_kernel: bool  # OIHW -> HWIO
    head: bool  # belongs to the 1x1 head conv / BN


def _layout() -> list[_Entry]:
    """Every efficientnet_pytorch B0 tensor (without ``_fc`` and ``num_batches_tracked``) and its flax place."""
    entries: list[_Entry] = []

    def conv(torch_prefix, flax_path, c_out, c_in, k, bias=False, head=False):
        entries.append(
            _Entry(
                f"{torch_prefix}.weight", (c_out, c_in, k, k), "params", (*flax_path, "kernel"), True, head
            )
        )
        if bias:
            entries.append(
                _Entry(f"{torch_prefix}.bias", (c_out,), "params", (*flax_path, "bias"), False, head)
            )

    def bn(torch_prefix, flax_path, c, head=False):
        for t, col, f in _BN_PARAMS + _BN_STATS:
            entries.append(_Entry(f"{torch_prefix}.{t}", (c,), col, (*flax_path, f), False, head))

    conv("_conv_stem", ("stem_conv",), STEM_FEATURES, 3, 3)
    bn("_bn0", ("stem_bn",), STEM_FEATURES)
    blocks = efficientnet_b0_blocks()
    for i, cfg in enumerate(blocks):
        t, f = f"_blocks.{i}", f"block_{i}"
        c_mid, c_se = cfg.expanded_features, cfg.squeezed_features
        if cfg.expand_ratio != 1:
            conv(f"{t}._expand_conv", (f, "expand_conv"), c_mid, cfg.in_features, 1)
            bn(f"{t}._bn0", (f, "expand_bn"), c_mid)
        conv(f"{t}._depthwise_conv", (f, "depthwise_conv"), c_mid, 1, cfg.kernel)
        bn(f"{t}._bn1", (f, "depthwise_bn"), c_mid)
        conv(f"{t}._se_reduce", (f, "se_reduce"), c_se, c_mid, 1, bias=True)
        conv(f"{t}._se_expand", (f, "se_expand"), c_mid, c_se, 1, bias=True)
        conv(f"{t}._project_conv", (f, "project_conv"), cfg.out_features, c_mid, 1)
        bn(f"{t}._bn2", (f, "project_bn"), cfg.out_features)
    conv("_conv_head", ("head_conv",), HEAD_FEATURES, blocks[-1].out_features, 1, head=True)
    bn("_bn1", ("head_bn",), HEAD_FEATURES, head=True)
    return entries


def efficientnet_b0_torch_shapes(
    include_head: bool = True, include_fc: bool = False, num_classes: int = 1000
) -> dict[str, tuple[int, ...]]:
    """The efficientnet_pytorch EfficientNet-B0 ``state_dict()`` layout: names and shapes, in module order.

    ``num_batches_tracked`` buffers (shape ``()``) are not listed.

    Args:
        include_head: list ``_conv_head.weight`` and ``_bn1.*`` (the 1x1 conv to 1280 + BN).
        include_fc: also list the classifier ``_fc.weight`` ``[num_classes, 1280]`` and ``_fc.bias``.
        num_classes: classifier size for ``include_fc``.

    Returns:
        ``{torch_name: shape}`` (conv weights OIHW, depthwise ``[C, 1, k, k]``).
    """
    shapes = {e.torch_name: e.torch_shape for e in _layout() if include_head or not e.head}
    if include_fc:
        shapes["_fc.weight"] = (num_classes, HEAD_FEATURES)
        shapes["_fc.bias"] = (num_classes,)
    return shapes


def _ignored(name: str) -> bool:
    return name.startswith("_fc.") or name.endswith("num_batches_tracked")


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def convert_efficientnet_b0(
    state_dict: Mapping[str, Any], include_head: bool = False, dtype: Any = np.float32
) -> dict[str, dict]:
    """Converts an efficientnet_pytorch EfficientNet-B0 state dict to ``EfficientNetB0`` variables.

    The check is strict: every expected tensor must be present with its PyTorch shape, and no key may be left
    over except ``_fc.*`` and ``*.num_batches_tracked``. Strip any prefix first (:func:`strip_prefix`).

    Args:
        state_dict: ``{efficientnet_pytorch name: array}``, numpy arrays or torch tensors.
        include_head: convert ``_conv_head``/``_bn1`` too (for ``EfficientNetB0(include_head=True)``). When
            False, head tensors may be absent; if present, their shapes are still checked, then they are dropped.
        dtype: dtype of the returned arrays.

    Returns:
        ``{'params': nested dict, 'batch_stats': nested dict}`` of numpy arrays, ready for
        ``EfficientNetB0(include_head=include_head).apply(variables, x, train=False)``.

    Raises:
        KeyError: an expected tensor is missing, or an unknown key is present (the message names them).
        ValueError: a tensor has the wrong shape (the message names the key, its shape and the expected one).
    """
    entries = _layout()
    known = {e.torch_name for e in entries}
    unknown = sorted(k for k in state_dict if k not in known and not _ignored(k))
    if unknown:
        raise KeyError(
            f"unknown keys in the EfficientNet-B0 state dict (wrong model or an unstripped prefix?): {unknown[:10]}"
            + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        )
    missing = [
        e.torch_name for e in entries if e.torch_name not in state_dict and (include_head or not e.head)
    ]
    if missing:
        raise KeyError(
            f"missing keys in the EfficientNet-B0 state dict: {missing[:10]}"
            + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        )

    variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for e in entries:
        if e.torch_name not in state_dict:  # optional head
            continue
        value = _to_numpy(state_dict[e.torch_name])
        if tuple(value.shape) != e.torch_shape:
            raise ValueError(
                f"state dict key {e.torch_name!r} has shape {tuple(value.shape)}, expected {e.torch_shape} "
                f"(flax {e.collection}/{'/'.join(e.path)})"
            )
        if e.head and not include_head:
            continue
        if e.is_kernel:
            value = np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO; depthwise [C 1 k k] -> [k k 1 C]
        node = variables[e.collection]
        for part in e.path[:-1]:
            node = node.setdefault(part, {})
        node[e.path[-1]] = np.ascontiguousarray(value, dtype=dtype)
    return variables


def strip_prefix(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Keeps the keys that start with ``prefix``, without it (e.g. ``camencode.trunk.`` of LSS checkpoints).

    Args:
        state_dict: a flat state dict.
        prefix: the prefix, usually ending in ``.``; ``""`` keeps everything.

    Returns:
        ``{key[len(prefix):]: value}`` for the keys starting with ``prefix``.

    Raises:
        KeyError: no key starts with ``prefix``.
    """
    if not prefix:
        return dict(state_dict)
    out = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not out:
        sample = sorted(state_dict)[:5]
        raise KeyError(f"no state dict key starts with {prefix!r}; keys begin like {sample}")
    return out


def load_torch_state_dict(path: str | os.PathLike, prefix: str = "") -> dict[str, np.ndarray]:
    """Reads a flat state dict from a local file into numpy arrays (never downloads).

    ``.pth``/``.pt``/``.bin``/``.ckpt`` files are read with ``torch.load(path, map_location='cpu',
    weights_only=True)`` (torch must be installed); a checkpoint whose top level is ``{'state_dict': ...}`` or
    ``{'model': ...}`` is unwrapped. ``.npz`` files (e.g. written once by ``np.savez(path, **sd)`` where torch is
    available) are read with numpy alone.

    Args:
        path: the local file.
        prefix: keep only the keys starting with this prefix and strip it (``"camencode.trunk."`` for a
            lift-splat-shoot checkpoint); ``""`` keeps all keys.

    Returns:
        ``{name: np.ndarray}``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ImportError: the file needs torch and torch is not installed.
        ValueError: the suffix is not recognised or the file holds no flat mapping of tensors.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such state dict file: {path}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            sd = {k: f[k] for k in f.files}
    elif suffix in (".pth", ".pt", ".bin", ".ckpt"):
        try:
            import torch
        except ImportError as err:
            raise ImportError(
                f"reading {path!r} needs PyTorch (pip install torch); alternatively convert it to .npz where torch "
                "is available: np.savez(out, **{k: v.numpy() for k, v in torch.load(path).items()})"
            ) from err
        obj = torch.load(path, map_location="cpu", weights_only=True)
        for wrapper in ("state_dict", "model"):
            if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
        if not isinstance(obj, Mapping):
            raise ValueError(f"{path!r} holds a {type(obj).__name__}, not a state dict")
        sd = {k: _to_numpy(v) for k, v in obj.items() if hasattr(v, "shape")}
    else:
        raise ValueError(
            f"unrecognised state dict file suffix {suffix!r} (expected .pth, .pt, .bin, .ckpt or .npz)"
        )
    return strip_prefix(sd, prefix)
