"""The Flagz network (shared/spec/selfplay-and-training.md, "The network").

Contract: ``forward(board, action_mask)`` with board (N, 11, 11, 10) float32 and
action_mask (N, 2, 11, 10) bool returns ``(policy_logits, value)``: logits (N, 220)
with illegal moves set to -1e32, value (N, 1) in -1..1 for the player to move.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

BOARD_SHAPE = (11, 11, 10)
MASK_SHAPE = (2, 11, 10)
POLICY_SIZE = 220
CELLS = 110
ILLEGAL_LOGIT = -1e32


@dataclass(frozen=True)
class ModelParams:
    """The constructor arguments; stored as JSON next to each checkpoint (model.pt.params)."""

    model_type: Literal["conv2d", "resnet"] = "conv2d"
    blocks: int = 5
    filters: int = 128

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelParams:
        unknown = set(d) - {"model_type", "blocks", "filters"}
        if unknown:
            raise ValueError(f"unknown model parameter(s): {sorted(unknown)}")
        params = cls(**d)
        if params.model_type not in ("conv2d", "resnet"):
            raise ValueError(f"model_type must be conv2d or resnet, got {params.model_type!r}")
        if params.blocks < 1 or params.filters < 1:
            raise ValueError(f"blocks and filters must be positive: {params}")
        return params


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class ResidualBlock(nn.Module):
    def __init__(self, filters: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn_relu(filters, filters),
            nn.Conv2d(filters, filters, 3, padding=1, bias=False),
            nn.BatchNorm2d(filters),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + x)


class HexzNet(nn.Module):
    """conv2d: `blocks` conv-BN-ReLU layers; resnet: one conv-BN-ReLU + blocks-1 residual blocks.

    Convolutions use padding=1, the same as padding='same' for 3x3 kernels, because
    TorchScript freezing fails on the string form.
    """

    def __init__(self, model_type: str = "conv2d", blocks: int = 5, filters: int = 128) -> None:
        super().__init__()
        ModelParams.from_dict({"model_type": model_type, "blocks": blocks, "filters": filters})
        layers = _conv_bn_relu(BOARD_SHAPE[0], filters)
        if model_type == "conv2d":
            for _ in range(blocks - 1):
                layers += _conv_bn_relu(filters, filters)
        else:
            layers += [ResidualBlock(filters) for _ in range(blocks - 1)]
        self.torso = nn.Sequential(*layers)
        self.policy_head = nn.Sequential(
            nn.Conv2d(filters, 2, 1, bias=False),
            nn.BatchNorm2d(2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(POLICY_SIZE, POLICY_SIZE),
        )
        self.value_head = nn.Sequential(
            nn.Conv2d(filters, 1, 1, bias=False),
            nn.BatchNorm2d(1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(CELLS, CELLS),
            nn.ReLU(),
            nn.Linear(CELLS, 1),
            nn.Tanh(),
        )

    def forward(
        self, board: torch.Tensor, action_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.torso(board)  # (N, filters, 11, 10)
        logits = self.policy_head(x)  # (N, 220)
        logits = logits.masked_fill(~action_mask.flatten(1), -1e32)  # ILLEGAL_LOGIT
        return logits, self.value_head(x)  # (N, 220), (N, 1)


def make_model(params: ModelParams) -> HexzNet:
    return HexzNet(params.model_type, params.blocks, params.filters)


def to_scriptmodule_bytes(model: nn.Module) -> bytes:
    """TorchScript (torch.jit.script) of `model` in eval mode, as the C++ workers load it."""
    was_training = model.training
    model.eval()
    try:
        buf = io.BytesIO()
        torch.jit.save(torch.jit.script(model), buf)
        return buf.getvalue()
    finally:
        model.train(was_training)


def load_scriptmodule(source: str | Path | bytes, device: str = "cpu") -> torch.jit.ScriptModule:
    """Loads any TorchScript model with the network contract, in eval mode.

    Files saved in training mode (like the original project's) would otherwise use
    batch statistics in batch norm; eval() is always applied.
    """
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        module = torch.jit.load(source, map_location=device)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"not a loadable TorchScript model: {e}") from e
    module.eval()
    return module
