"""Network architectures by name: adding one is a torso function and its entry in
:data:`ARCHITECTURES` (with new building blocks, if it needs any, in hexz_tasks.layers).

A torso maps the (N, 11, 11, 10) board to (N, filters, 11, 10); hexz_tasks.model adds
the policy and value heads. Batch norms that directly follow a convolution in an
nn.Sequential are folded for inference. Importing this module does not load torch (the
torsos do, when called): settings check HEXZ_MODEL_TYPE against it in processes that
must not load torch before they fork.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from hexz_tasks.layout import CHANNELS

if TYPE_CHECKING:
    from torch import nn


def conv2d(blocks: int, filters: int) -> list[nn.Module]:
    """`blocks` conv-BN-ReLU layers (the reference network)."""
    from hexz_tasks.layers import conv_bn_relu

    layers = conv_bn_relu(CHANNELS, filters)
    for _ in range(blocks - 1):
        layers += conv_bn_relu(filters, filters)
    return layers


def resnet(blocks: int, filters: int) -> list[nn.Module]:
    """One conv-BN-ReLU layer, then blocks - 1 residual blocks."""
    from hexz_tasks.layers import ResidualBlock, conv_bn_relu

    return [*conv_bn_relu(CHANNELS, filters), *(ResidualBlock(filters) for _ in range(blocks - 1))]


# (blocks, filters) -> the torso's layers.
ARCHITECTURES: dict[str, Callable[[int, int], list[nn.Module]]] = {
    "conv2d": conv2d,
    "resnet": resnet,
}
