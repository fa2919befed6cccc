"""The Flagz network (shared/spec/selfplay-and-training.md, "The network"); its
architectures are registered by name in hexz_tasks.architectures.

Contract: ``forward(board, action_mask)`` with board (N, 11, 11, 10) float32 and
action_mask (N, 2, 11, 10) bool returns ``(policy_logits, value)``: logits (N, 220)
with illegal moves set to -1e32, value (N, 1) in -1..1 for the player to move.

Every network is a HexzNet: a torso from hexz_tasks.architectures (by name, the
``model_type`` of :class:`ModelParams`) and the spec's policy and value heads. A model
file says what it is:
checkpoints keep their ModelParams in ``model.pt.params`` and inside their TorchScript
file (:func:`to_scriptmodule_bytes`); nothing is inferred from weight names.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from hexz_tasks.architectures import ARCHITECTURES
from hexz_tasks.errors import ModelError
from hexz_tasks.layout import CELLS, POLICY_SIZE

ILLEGAL_LOGIT = -1e32
# Where a TorchScript file of ours keeps its ModelParams (torch.jit extra files).
PARAMS_EXTRA_FILE = "hexz_model_params.json"


@dataclass(frozen=True)
class ModelParams:
    """What a network is: architecture name and size. Stored as JSON next to each
    checkpoint (model.pt.params) and inside its TorchScript file."""

    model_type: str = "conv2d"
    blocks: int = 5
    filters: int = 128

    def __post_init__(self) -> None:
        if self.model_type not in ARCHITECTURES:
            raise ModelError(
                f"unknown model_type {self.model_type!r}: one of {', '.join(ARCHITECTURES)}"
            )
        if self.blocks < 1 or self.filters < 1:
            raise ModelError(f"blocks and filters must be positive: {self}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelParams:
        unknown = set(d) - {"model_type", "blocks", "filters"}
        if unknown:
            raise ModelError(f"unknown model parameter(s): {sorted(unknown)}")
        try:
            return cls(**d)
        except TypeError as e:
            raise ModelError(f"bad model parameters {d}: {e}") from None


class HexzNet(nn.Module):
    """A torso of ARCHITECTURES[model_type] and the policy and value heads."""

    def __init__(self, model_type: str = "conv2d", blocks: int = 5, filters: int = 128) -> None:
        super().__init__()
        self.params = ModelParams(model_type, blocks, filters)
        self.torso = nn.Sequential(*ARCHITECTURES[model_type](blocks, filters))
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


# The original project's conv2d layout: its layer i is cnn_blocks._blocks.i.{0: conv,
# 1: batch norm}, ours torso.{3 i: conv, 3 i + 1: batch norm}.
_ORIGINAL_BLOCK = re.compile(r"^cnn_blocks\._blocks\.(\d+)\.([01])\.(.+)$")


def network_with_weights(params: ModelParams, state: dict[str, torch.Tensor]) -> HexzNet:
    """A HexzNet of `params` (eval mode) holding `state` (ours, or the original
    project's conv2d layout); ModelError if the weights do not fit it exactly."""
    renamed = {}
    for key, value in state.items():
        m = _ORIGINAL_BLOCK.match(key)
        renamed[f"torso.{3 * int(m[1]) + int(m[2])}.{m[3]}" if m else key] = value
    net = make_model(params)
    try:
        net.load_state_dict(renamed)
    except RuntimeError as e:
        raise ModelError(f"weights do not fit {params}: {e}") from None
    return net.eval()


def to_scriptmodule_bytes(model: HexzNet) -> bytes:
    """TorchScript (torch.jit.script) of `model` in eval mode, as the C++ workers load
    it, with its ModelParams inside (see :func:`load_scripted`)."""
    was_training = model.training
    model.eval()
    try:
        buf = io.BytesIO()
        extra = {PARAMS_EXTRA_FILE: json.dumps(model.params.to_dict())}
        torch.jit.save(torch.jit.script(model), buf, _extra_files=extra)
        return buf.getvalue()
    finally:
        model.train(was_training)


def load_scripted(
    source: str | Path | bytes, device: str = "cpu"
) -> tuple[torch.jit.ScriptModule, ModelParams | None]:
    """Loads any TorchScript model with the network contract, in eval mode, and the
    ModelParams it names (None for files that name none, like the original project's).

    Files saved in training mode (like the original project's) would otherwise use
    batch statistics in batch norm; eval() is always applied. ModelError if the bytes
    are not a TorchScript model or name unknown parameters.
    """
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    extra = {PARAMS_EXTRA_FILE: ""}
    try:
        module = torch.jit.load(source, map_location=device, _extra_files=extra)
    except (RuntimeError, ValueError, OSError) as e:
        raise ModelError(f"not a loadable TorchScript model: {e}") from e
    module.eval()
    params = None
    if extra[PARAMS_EXTRA_FILE]:
        try:
            params = ModelParams.from_dict(json.loads(extra[PARAMS_EXTRA_FILE]))
        except (ValueError, TypeError, AttributeError) as e:
            raise ModelError(f"the model's {PARAMS_EXTRA_FILE} is corrupt: {e}") from None
    return module, params


def load_scriptmodule(source: str | Path | bytes, device: str = "cpu") -> torch.jit.ScriptModule:
    """The module of :func:`load_scripted`."""
    return load_scripted(source, device)[0]
