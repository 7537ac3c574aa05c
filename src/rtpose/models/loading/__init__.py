"""Weight loaders: official checkpoints and exported graphs -> our PyTorch networks."""

from rtpose.models.layers import fuse_conv_bn
from rtpose.models.loading.checkpoint import check_state_dict, load_pth, read_state_dict
from rtpose.models.loading.onnx_import import (
    NmsSettings,
    load_mmdeploy_onnx,
    mmdeploy_nms_settings,
    onnx_weights,
    parameters_in_use_order,
)

__all__ = [
    "NmsSettings",
    "check_state_dict",
    "fuse_conv_bn",
    "load_mmdeploy_onnx",
    "load_pth",
    "mmdeploy_nms_settings",
    "onnx_weights",
    "parameters_in_use_order",
    "read_state_dict",
]
