"""Batched network inference for self-play and the CPU player.

``Evaluator(model)(boards, masks) -> (priors, values)``: priors (N, 220) float32, the
softmax over legal moves, and values (N,) float32 for the player to move, computed
under ``torch.inference_mode()`` on a model that is always in eval mode.

The fast CPU path ("auto" on a CPU): a model whose ModelParams are known (a HexzNet,
a TorchScript file of ours, which names them, or any model with the network contract
when the caller names them, like the original project's files) is rebuilt as a
HexzNet of those parameters, its batch norms are folded into the convolutions, and it
is exported to ONNX and run by ONNX Runtime ("onnx"); without the onnx/onnxruntime
packages it runs in PyTorch in channels_last layout ("folded_cl"). Every fast path is
checked against the plain eval-mode model on 64 real positions (max deviation 1e-4 on
priors and values) and falls back to the model as loaded ("plain") if it deviates or
its weights do not fit the parameters; a model of unknown parameters runs as loaded. On the PyTorch
paths, batches under SMALL_BATCH rows run on one thread. Building an Evaluator takes
a second or more (export and check): build one per model and reuse it.

Measured on the 2-core AMD EPYC (Zen 3, AVX2, no AVX-512/bf16) these were developed
on, conv2d 5x128 with the original fixture weights, batch 128, 2 threads, by
``python -m bench.selfplay --modes`` while other jobs shared the machine (evals/s;
absolute numbers vary with the load; ONNX Runtime was the fastest in every run):
plain TorchScript 230, folded NCHW 245, folded channels_last 312, frozen TorchScript +
optimize_for_inference 172, torch.compile 279 (12-35 s to compile, and a recompile
per batch size), bf16 12 (emulated: no native bf16 here), ONNX Runtime 380; with
1 thread ONNX Runtime made 503 evals/s where the reference (plain, batch 64) made
294. Deviations from the plain model: ~1e-8 for the float32 paths, 3e-5 (priors)
and 2e-4 (values) for bf16.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from celery.exceptions import SoftTimeLimitExceeded
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from hexz_tasks.layout import BOARD_SHAPE, MASK_SHAPE
from hexz_tasks.model import HexzNet, ModelError, ModelParams, load_scripted, network_with_weights

log = logging.getLogger(__name__)

MODES = ("auto", "plain", "folded", "folded_cl", "onnx", "frozen", "compile", "bf16")
TOLERANCE = 1e-4
# Below this batch size one thread is faster: the work is too small to split, and on a
# busy machine a descheduled second thread stalls every operator (measured: 0.6 ms
# per call on 1 thread vs. 9-19 ms on 2 threads for batch 3 on a loaded 2-core box).
SMALL_BATCH = 8

# torch's thread count is process-wide: concurrent callers (the CPU player's request
# threads) share one reduction to a single thread and the last one out restores it.
_threads_lock = threading.Lock()
_one_thread_users = 0
_saved_threads = 0


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    global _one_thread_users, _saved_threads
    with _threads_lock:
        if _one_thread_users == 0:
            _saved_threads = torch.get_num_threads()
            torch.set_num_threads(1)
        _one_thread_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _one_thread_users -= 1
            if _one_thread_users == 0:
                torch.set_num_threads(_saved_threads)


Model = nn.Module | str | Path | bytes
# What self-play and the CPU player call: (boards, masks) -> (priors, values).
Evaluate = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _plain(source: Model, device: str) -> tuple[nn.Module, ModelParams | None]:
    """The model as given or loaded, in eval mode (a copy: the caller's model is
    untouched), and the parameters it names."""
    if isinstance(source, str | Path | bytes):
        return load_scripted(source, device)
    if not isinstance(source, nn.Module):
        raise ValueError(f"expected a model, a TorchScript file or bytes, got {type(source)}")
    if isinstance(source, torch.jit.ScriptModule):
        return source.to(device).eval(), None  # TorchScript modules cannot be deep-copied
    params = source.params if isinstance(source, HexzNet) else None
    return copy.deepcopy(source).to(device).eval(), params


def _fuse_sequential(seq: nn.Sequential) -> nn.Sequential:
    """`seq` with each batch norm that directly follows a convolution folded into it."""
    mods = list(seq)
    out: list[nn.Module] = []
    i = 0
    while i < len(mods):
        m = mods[i]
        if (
            isinstance(m, nn.Conv2d)
            and i + 1 < len(mods)
            and isinstance(mods[i + 1], nn.BatchNorm2d)
        ):
            out.append(fuse_conv_bn_eval(m, mods[i + 1]))
            i += 2
            continue
        _fuse_within(m)
        out.append(m)
        i += 1
    return nn.Sequential(*out)


def _fuse_within(module: nn.Module) -> None:
    """Folds the batch norms of every nn.Sequential inside `module`, in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.Sequential):
            setattr(module, name, _fuse_sequential(child))
        else:
            _fuse_within(child)


def fold_batch_norm(net: HexzNet) -> HexzNet:
    """A copy of `net` (eval mode) with every batch norm that directly follows a
    convolution in an nn.Sequential (anywhere in it) folded into that convolution."""
    net = copy.deepcopy(net).eval()
    _fuse_within(net)
    return net


Forward = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _torch_forward(model: nn.Module, channels_last: bool, dtype: torch.dtype) -> Forward:
    def forward(boards: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if channels_last:
            boards = boards.contiguous(memory_format=torch.channels_last)
        if dtype != torch.float32:
            boards = boards.to(dtype)
        return model(boards, masks)

    return forward


def _onnx_forward(net: HexzNet) -> Forward:
    """`net` exported to ONNX and run by ONNX Runtime (CPU), with torch's thread count.

    Raises ImportError if onnx / onnxruntime are not installed.
    """
    import onnx  # noqa: F401  (torch's exporter needs it)
    import onnxruntime as ort

    boards, masks = torch.zeros(2, *BOARD_SHAPE), torch.ones(2, *MASK_SHAPE, dtype=torch.bool)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated
        torch.onnx.export(
            net,
            (boards, masks),
            buf,
            input_names=["board", "action_mask"],
            output_names=["policy_logits", "value"],
            dynamic_axes={k: {0: "n"} for k in ("board", "action_mask", "policy_logits", "value")},
            dynamo=False,
            opset_version=17,
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle workers must not spin: the search runs on the main thread between batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])

    def forward(boards: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feed = {"board": boards.numpy(), "action_mask": masks.numpy()}
        logits, values = session.run(None, feed)
        return torch.from_numpy(logits), torch.from_numpy(values)

    return forward


class Evaluator:
    """Runs a model with the network contract on batches of NumPy positions.

    `params` names the model's ModelParams where the model does not (see the module
    docstring); ModelError if a file or bytes are not a loadable model.
    """

    def __init__(
        self,
        module_or_path: Model,
        device: str = "cpu",
        *,
        mode: str = "auto",
        params: ModelParams | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.device = torch.device(device)
        self.plain, named = _plain(module_or_path, device)
        self.params = params or named
        self._plain_forward: Forward = self.plain
        self._forward: Forward = self.plain
        self.mode = "plain"
        if mode == "auto":
            mode = "folded"
            if self.device.type == "cpu":
                mode = "onnx" if _onnx_available() else "folded_cl"
        if mode != "plain":
            self._build(mode)

    def _build(self, mode: str) -> None:
        if self.params is None:
            log.info("the model names no ModelParams; running it as loaded")
            return
        try:
            state = {k: v.detach() for k, v in self.plain.state_dict().items()}
            net = network_with_weights(self.params, state).to(self.device)
        except ModelError as e:
            log.warning("running the model as loaded: %s", e)
            return
        fast = fold_batch_norm(net)
        if mode == "onnx":
            if self.device.type != "cpu":
                raise ValueError("mode onnx runs on the CPU only")
            try:
                forward = _onnx_forward(fast)
            except SoftTimeLimitExceeded:  # the task's time is up: not an ONNX failure
                raise
            except Exception as e:  # missing packages or an export failure: use torch
                log.warning("ONNX Runtime path unavailable (%s); using folded_cl", e)
                mode = "folded_cl"
        if mode == "onnx":
            pass  # built above
        elif mode == "bf16":
            forward = _torch_forward(fast.to(torch.bfloat16), False, torch.bfloat16)
        elif mode == "folded":
            forward = _torch_forward(fast, False, torch.float32)
        else:
            fast = fast.to(memory_format=torch.channels_last)
            model: nn.Module = fast
            if mode == "frozen":
                model = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(fast)))
            elif mode == "compile":
                model = torch.compile(fast, dynamic=False)
            forward = _torch_forward(model, True, torch.float32)
        self._forward, self.mode = forward, mode
        deviation = self.deviation()
        if mode != "bf16" and not max(deviation) <= TOLERANCE:
            log.warning(
                "fast inference path %s deviates by %s from the plain model; using plain",
                mode,
                deviation,
            )
            self._forward, self.mode = self._plain_forward, "plain"

    @staticmethod
    def _outputs(forward: Forward, boards: torch.Tensor, masks: torch.Tensor):
        logits, values = forward(boards, masks)
        return torch.softmax(logits.float(), dim=1), values.float().reshape(-1)

    def __call__(self, boards: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """boards (N, 11, 11, 10) float32, masks (N, 2, 11, 10) bool -> priors, values."""
        if boards.shape[1:] != BOARD_SHAPE or masks.shape[1:] != MASK_SHAPE:
            raise ValueError(
                f"expected boards (N, {BOARD_SHAPE}) and masks (N, {MASK_SHAPE}), "
                f"got {boards.shape} and {masks.shape}"
            )
        # Small batches (suggest-move searches) run fastest on one thread.
        single = self.device.type == "cpu" and len(boards) < SMALL_BATCH
        with _one_thread() if single else contextlib.nullcontext(), torch.inference_mode():
            b = torch.from_numpy(np.ascontiguousarray(boards, dtype=np.float32))
            m = torch.from_numpy(np.ascontiguousarray(masks, dtype=bool))
            if self.device.type != "cpu":
                b = b.to(self.device, non_blocking=True)
                m = m.to(self.device, non_blocking=True)
            priors, values = self._outputs(self._forward, b, m)
            return priors.cpu().numpy(), values.cpu().numpy()

    def deviation(self, n: int = 64, seed: int = 0) -> tuple[float, float]:
        """Max |difference| of priors and of values from the plain eval model on a
        random batch of realistic positions."""
        boards, masks = sample_positions(n, seed)
        with torch.inference_mode():
            bt = torch.from_numpy(boards).to(self.device)
            mt = torch.from_numpy(masks).to(self.device)
            p0, v0 = self._outputs(self._plain_forward, bt, mt)
            p1, v1 = self._outputs(self._forward, bt, mt)
        return float((p1 - p0).abs().max()), float((v1 - v0).abs().max())


def _onnx_available() -> bool:
    return (
        importlib.util.find_spec("onnxruntime") is not None
        and importlib.util.find_spec("onnx") is not None
    )


def sample_positions(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n positions of random games (0-40 random moves in), from the player to move's view."""
    from hexz_tasks.engine import random_position

    rng = np.random.default_rng(seed)
    boards = np.empty((n, *BOARD_SHAPE), dtype=np.float32)
    masks = np.empty((n, *MASK_SHAPE), dtype=bool)
    for i in range(n):
        b, p = random_position(rng, int(rng.integers(0, 40)))
        boards[i] = b.tensor(p)
        masks[i] = b.action_mask(p)
    return boards, masks


def as_evaluator(model: Evaluate | Model, device: str = "cpu") -> Evaluate:
    """An Evaluator for a model (module, TorchScript file or bytes); `model` itself if
    it already evaluates (an Evaluator, or any function with its signature)."""
    if isinstance(model, nn.Module | str | Path | bytes):
        return Evaluator(model, device)
    return model


def throughput(evaluator: Evaluator, batch: int, seconds: float = 2.0, seed: int = 0) -> float:
    """Bare batched inference speed in evaluations per second (for benchmarks)."""
    boards, masks = sample_positions(batch, seed)
    evaluator(boards, masks)
    n = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        evaluator(boards, masks)
        n += batch
    return n / elapsed
