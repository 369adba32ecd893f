"""Network modules (Flax linen): the EfficientNet-B0 image trunk and converters for PyTorch weights."""

from bevjax.models.convert import (
    convert_efficientnet_b0,
    efficientnet_b0_torch_shapes,
    load_torch_state_dict,
    strip_prefix,
)
from bevjax.models.efficientnet import (
    EFFICIENTNET_B0_STAGES,
    BlockConfig,
    EfficientNetB0,
    MBConvBlock,
    StageConfig,
    drop_connect,
    efficientnet_b0_blocks,
)

__all__ = [
    "EFFICIENTNET_B0_STAGES",
    "BlockConfig",
    "EfficientNetB0",
    "MBConvBlock",
    "StageConfig",
    "convert_efficientnet_b0",
    "drop_connect",
    "efficientnet_b0_blocks",
    "efficientnet_b0_torch_shapes",
    "load_torch_state_dict",
    "strip_prefix",
]
