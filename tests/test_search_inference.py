"""The Evaluator: batched inference with the network contract, fast path checked."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hexz_tasks import architectures
from hexz_tasks.inference import Evaluator, fold_batch_norm, sample_positions
from hexz_tasks.model import (
    HexzNet,
    ModelError,
    ModelParams,
    load_scripted,
    to_scriptmodule_bytes,
)

FAST = ("onnx", "folded_cl")  # what "auto" picks on a CPU, with and without onnxruntime
FIXTURE_MODEL = Path(__file__).resolve().parent / "data" / "original-conv2d5-scriptmodule.pt"


def trained_looking(net: HexzNet) -> HexzNet:
    """Non-trivial batch norm statistics, so that folding has something to fold."""
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net.eval()


def reference(module: nn.Module, boards: np.ndarray, masks: np.ndarray):
    with torch.inference_mode():
        logits, values = module.eval()(torch.from_numpy(boards), torch.from_numpy(masks))
        return torch.softmax(logits, 1).numpy(), values.reshape(-1).numpy()


@pytest.fixture(scope="module")
def positions() -> tuple[np.ndarray, np.ndarray]:
    return sample_positions(16, seed=3)


def test_fixture_model_is_rebuilt_folded_and_matches(positions) -> None:
    """The original project's file names no ModelParams: it runs as loaded unless the
    caller names them; then its weights (in the original's layout) fill a HexzNet."""
    assert load_scripted(FIXTURE_MODEL)[1] is None
    assert Evaluator(FIXTURE_MODEL).mode == "plain"
    ev = Evaluator(FIXTURE_MODEL, params=ModelParams("conv2d", 5, 128))
    assert ev.mode in FAST
    boards, masks = positions
    priors, values = ev(boards, masks)
    assert priors.shape == (16, 220) and priors.dtype == np.float32
    assert values.shape == (16,) and values.dtype == np.float32
    assert np.allclose(priors.sum(1), 1, atol=1e-5)
    assert np.all(priors[~masks.reshape(16, -1)] == 0)
    # The plain model, loaded and switched to eval mode (it was saved in training mode).
    p0, v0 = reference(torch.jit.load(FIXTURE_MODEL), boards, masks)
    assert np.abs(priors - p0).max() < 1e-4 and np.abs(values - v0).max() < 1e-4


@pytest.mark.parametrize("model_type", ["conv2d", "resnet"])
def test_our_network_in_any_form(model_type: str, positions) -> None:
    torch.manual_seed(2)
    net = trained_looking(HexzNet(model_type, 3, 16))
    boards, masks = positions
    p0, v0 = reference(net, boards, masks)
    data = to_scriptmodule_bytes(net)
    script, params = load_scripted(data)
    assert params == ModelParams(model_type, 3, 16)  # the file says what it is
    evaluators = [Evaluator(net), Evaluator(data), Evaluator(script, params=params)]
    for ev in [*evaluators, Evaluator(script)]:
        assert ev.mode in FAST if ev.params is not None else ev.mode == "plain"
        priors, values = ev(boards, masks)
        assert np.abs(priors - p0).max() < 1e-4 and np.abs(values - v0).max() < 1e-4


@pytest.mark.parametrize("mode", ["folded", "folded_cl", "onnx", "frozen"])
def test_every_exact_mode_matches_the_plain_model(mode: str, positions) -> None:
    if mode == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnx")
    torch.manual_seed(5)
    net = trained_looking(HexzNet("resnet", 2, 16))
    ev = Evaluator(net, mode=mode)
    assert ev.mode == mode
    boards, masks = positions
    p0, v0 = reference(net, boards, masks)
    for n in (1, 16):  # a small batch runs on one thread
        priors, values = ev(boards[:n], masks[:n])
        assert np.abs(priors - p0[:n]).max() < 1e-4 and np.abs(values - v0[:n]).max() < 1e-4


def test_folding_removes_batch_norm_and_keeps_outputs(positions) -> None:
    torch.manual_seed(3)
    net = trained_looking(HexzNet("resnet", 2, 8))
    folded = fold_batch_norm(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # input untouched
    boards, masks = positions
    p0, v0 = reference(net, boards, masks)
    p1, v1 = reference(folded, boards, masks)
    assert np.abs(p1 - p0).max() < 1e-5 and np.abs(v1 - v0).max() < 1e-5


class Foreign(nn.Module):
    """Some other model with the network contract: not a HexzNet layout."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(1210, 221)

    def forward(self, board: torch.Tensor, action_mask: torch.Tensor):
        out = self.body(board.flatten(1))
        logits = out[:, :220].masked_fill(~action_mask.flatten(1), -1e32)
        return logits, torch.tanh(out[:, 220:])


def test_other_models_run_as_loaded(positions) -> None:
    torch.manual_seed(4)
    model = Foreign()
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(model), buf)
    wrongly_named = Evaluator(buf.getvalue(), params=ModelParams("conv2d", 1, 8))
    for ev in (Evaluator(buf.getvalue()), Evaluator(model), wrongly_named):
        assert ev.mode == "plain"
        boards, masks = positions
        priors, values = ev(boards, masks)
        p0, v0 = reference(model, boards, masks)
        assert np.allclose(priors, p0, atol=1e-6) and np.allclose(values, v0, atol=1e-6)


class Wide(nn.Module):
    """A torso for the registry test: one wide convolution and a batch norm."""

    def __init__(self, filters: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(11, filters, 5, padding=2, bias=False), nn.BatchNorm2d(filters), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_a_new_architecture_is_one_registry_entry(monkeypatch, positions) -> None:
    monkeypatch.setitem(architectures.ARCHITECTURES, "wide", lambda blocks, f: [Wide(f)])
    net = trained_looking(HexzNet("wide", 1, 12))
    data = to_scriptmodule_bytes(net)
    assert load_scripted(data)[1] == ModelParams("wide", 1, 12)
    ev = Evaluator(data)
    assert ev.mode in FAST
    boards, masks = positions
    p0, v0 = reference(net, boards, masks)
    priors, values = ev(boards, masks)
    assert np.abs(priors - p0).max() < 1e-4 and np.abs(values - v0).max() < 1e-4


def test_evaluator_leaves_the_callers_model_alone(positions) -> None:
    net = HexzNet("conv2d", 1, 8).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    Evaluator(net)(*positions)
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_bad_input() -> None:
    with pytest.raises(ModelError, match="TorchScript"):
        Evaluator(b"not a model")
    with pytest.raises(ModelError, match="unknown model_type 'mlp': one of conv2d, resnet"):
        ModelParams("mlp", 1, 8)
    with pytest.raises(ModelError, match="unknown model parameter"):
        ModelParams.from_dict({"model_type": "conv2d", "depth": 3})
    with pytest.raises(ValueError, match="mode"):
        Evaluator(HexzNet("conv2d", 1, 8), mode="fastest")
    ev = Evaluator(HexzNet("conv2d", 1, 8))
    with pytest.raises(ValueError, match="expected boards"):
        ev(np.zeros((2, 11, 10), np.float32), np.zeros((2, 2, 11, 10), bool))
