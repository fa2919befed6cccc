"""One training run: drain the store, train from the latest checkpoint, save checkpoint N+1.

Modes (shared/spec/selfplay-and-training.md, "When and how to train"):

- window: when ``training_trigger_threshold`` new examples arrived, ``num_epochs``
  epochs over the newest ``training_examples_window_size`` examples, batches of
  ``batch_size``, shuffled without replacement when ``shuffle``.
- replay: when ``replay_buffer_size / replay_buffer_reuse`` new examples arrived, one
  step of ``replay_buffer_size / batch_size`` batches sampled with replacement from the
  newest ``replay_buffer_size`` examples.

With ``train_symmetries`` each example of a batch is trained under a random symmetry
of the board (hexz_tasks.symmetry). With ``value_target_q_weight`` w the value head's
target is ``(1 - w) * result + w * root_q`` (:func:`value_targets`).

"New" is the store's durable example counter minus the total recorded in the latest
checkpoint's stats.json, so a restarted trainer decides the same. The optimiser state
and step counter are saved with each checkpoint and restored, and sampling is seeded by
the checkpoint number, so training from a checkpoint is reproducible.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hexz_tasks import tensorboard_events
from hexz_tasks.dataset import Dataset, Window
from hexz_tasks.repository import ModelRepository, NotOwnerError, params_from_settings
from hexz_tasks.settings import Settings, parse_lr_schedule
from hexz_tasks.store import ExampleStore
from hexz_tasks.symmetry import random_symmetries

Tensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def trigger_size(settings: Settings) -> int:
    """New examples needed before the next training."""
    if settings.training_mode == "replay":
        return max(1, settings.replay_buffer_size // settings.replay_buffer_reuse)
    return settings.training_trigger_threshold


def should_train(settings: Settings, store: ExampleStore) -> bool:
    """Quick pre-check from the Redis counters alone (train_once decides exactly)."""
    return store.examples_since_training() >= trigger_size(settings)


def make_optimizer(settings: Settings, model: torch.nn.Module) -> torch.optim.Optimizer:
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=settings.learning_rate,
            momentum=settings.sgd_momentum,
            weight_decay=settings.adam_weight_decay,
        )
    return torch.optim.Adam(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.adam_weight_decay
    )


def learning_rate(settings: Settings, step: int) -> float:
    """The step-down schedule's rate at optimiser step `step` (else learning_rate)."""
    lr = settings.learning_rate
    for start, rate in parse_lr_schedule(settings.lr_schedule):
        if step >= start:
            lr = rate
    return lr


def batch_indices(settings: Settings, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices of every batch of this training run, in order."""
    bs = settings.batch_size
    if settings.training_mode == "replay":
        steps = max(1, settings.replay_buffer_size // bs)
        return [rng.integers(0, n, size=bs) for _ in range(steps)]
    out = []
    for _ in range(settings.num_epochs):
        order = rng.permutation(n) if settings.shuffle else np.arange(n)
        out += [order[i : i + bs] for i in range(0, n, bs)]
    return out


def value_targets(results: np.ndarray, root_q: np.ndarray, q_weight: float) -> np.ndarray:
    """The value head's targets: ``(1 - q_weight) * results + q_weight * root_q``, and the
    result alone where root_q is unknown (NaN: examples from the edge, format 1)."""
    if q_weight == 0:
        return results
    mixed = (1 - q_weight) * results + q_weight * root_q
    return np.where(np.isnan(root_q), results, mixed).astype(np.float32)


def prefetch(
    window: Window,
    batches: list[np.ndarray],
    pin: bool,
    workers: int = 1,
    depth: int = 4,
    symmetry_seed: int | None = None,
    q_weight: float = 0.0,
) -> Iterator[Tensors]:
    """Decodes batches in background threads (NumPy releases the GIL), `depth` batches
    ahead, so the model step never waits for data. Yields CPU tensors (pinned if `pin`)
    in order: boards, masks, move probabilities and value targets (:func:`value_targets`
    with `q_weight`). With a `symmetry_seed`, each example is under a random symmetry
    (drawn from the seed and the batch number, so reproducible)."""

    def make(i: int, idx: np.ndarray) -> Tensors:
        b = window.batch(idx)
        if symmetry_seed is not None:
            b = random_symmetries(b, np.random.default_rng([symmetry_seed, i]))
        values = value_targets(b.results, b.root_q, q_weight)
        ts = tuple(torch.from_numpy(a) for a in (b.boards, b.masks, b.move_probs, values))
        return tuple(t.pin_memory() for t in ts) if pin else ts

    todo = enumerate(batches)
    with ThreadPoolExecutor(workers, thread_name_prefix="hexz-prefetch") as pool:
        ahead = deque(pool.submit(make, *item) for item in itertools.islice(todo, depth))
        while ahead:
            ts = ahead.popleft().result()
            if (item := next(todo, None)) is not None:
                ahead.append(pool.submit(make, *item))
            yield ts


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def train_once(
    settings: Settings,
    store: ExampleStore,
    repo: ModelRepository,
    *,
    dataset: Dataset | None = None,
    still_owner: Callable[[], bool] | None = None,
    lock_lost: Callable[[], bool] | None = None,
) -> dict[str, Any] | None:
    """Trains checkpoint latest+1 if enough new examples arrived; returns its stats or None.

    Publishing the checkpoint, recording the run and the training events are the training
    tick's part (training_tick.run_training_tick): this stays a plain function of store and
    disk.
    `still_owner` (e.g. "this process still holds the training lock") is checked right
    before the new checkpoint appears (ModelRepository.save); `lock_lost` (a local flag,
    checked after every step) stops a training whose lock went to another trainer at
    once, with NotOwnerError, rather than hours later at its save. Afterwards the disk
    retention policy runs (hexz_tasks.retention).
    The trainer's TensorBoard events are written here too (hexz_tasks.tensorboard_events).
    """
    params = params_from_settings(settings)
    base = repo.ensure_initial(params, settings)
    base_stats = repo.load_stats(base)
    trained_at = int(base_stats.get("examples_total", 0))
    total = store.total_examples()
    if total - trained_at < trigger_size(settings):
        return None
    dataset = dataset or Dataset(repo.examples_store_dir)
    store.drain(dataset, repo)
    if dataset.count() == 0:  # the first examples have not settled in Redis yet
        return None
    pipeline = tensorboard_events.pipeline_scalars(store.redis, store.keys, base_stats.get("end"))
    stats = train_checkpoint(
        settings,
        repo,
        dataset,
        base,
        total,
        pipeline=pipeline,
        still_owner=still_owner,
        lock_lost=lock_lost,
    )
    store.set_trained(total)
    if settings.retention:
        from hexz_tasks.retention import collect_garbage_quietly

        collect_garbage_quietly(settings, repo, dataset, store.redis, store.keys)
    return stats


def train_checkpoint(
    settings: Settings,
    repo: ModelRepository,
    dataset: Dataset,
    base: int,
    total: int,
    *,
    pipeline: dict[str, float] | None = None,
    still_owner: Callable[[], bool] | None = None,
    lock_lost: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Trains checkpoint base+1 from the dataset's newest examples and saves it (no trigger
    check, no draining); `total` is the store's example count recorded in its stats.
    TensorBoard gets the run and the `pipeline` scalars (tensorboard_events)."""
    started, t0 = _now(), time.perf_counter()
    size = (
        settings.replay_buffer_size
        if settings.training_mode == "replay"
        else settings.training_examples_window_size
    )
    window = dataset.window(size)
    t_loaded = time.perf_counter()

    device = torch.device(settings.device)
    cuda = device.type == "cuda"
    params = repo.load_params(base)
    model = repo.load_model(base)
    if cuda:
        torch.backends.cudnn.benchmark = True
        model = model.to(device, memory_format=torch.channels_last)
    model.train()
    optimizer = make_optimizer(settings, model)
    saved = repo.load_optimizer_state(base)
    step = 0
    if saved is not None and saved.get("optimizer") == settings.optimizer:
        optimizer.load_state_dict(saved["state"])
        step = int(saved["step"])
        for group in optimizer.param_groups:  # the settings win over the saved ones
            group["weight_decay"] = settings.adam_weight_decay
            if settings.optimizer == "sgd":
                group["momentum"] = settings.sgd_momentum
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    rng = np.random.default_rng(base)  # reproducible from the checkpoint
    batches = batch_indices(settings, len(window), rng)
    symmetry_seed = int(rng.integers(2**63)) if settings.train_symmetries else None
    per_epoch = (
        len(batches) if settings.training_mode == "replay" else len(batches) // settings.num_epochs
    )
    losses: list[dict[str, float]] = []
    sums = torch.zeros(2, device=device)  # policy and value loss sums of the current epoch
    # Every step's losses stay on the device until the end (no host sync per step).
    step_losses = torch.zeros(len(batches), 2, device=device)
    learning_rates: list[float] = []
    samples = epoch_samples = 0
    lr = learning_rate(settings, step)
    pin = cuda and settings.pin_memory
    # On CPU one decoding thread suffices (the step needs the cores); a GPU eats faster.
    workers = min(4, os.cpu_count() or 1) if cuda else 1
    t_loop = time.perf_counter()
    batch_iter = prefetch(
        window,
        batches,
        pin,
        workers,
        symmetry_seed=symmetry_seed,
        q_weight=settings.value_target_q_weight,
    )
    with contextlib.closing(batch_iter):
        for i, (boards, masks, probs, targets) in enumerate(batch_iter):
            boards = boards.to(device, non_blocking=pin)  # (B, 11, 11, 10)
            if cuda:
                boards = boards.contiguous(memory_format=torch.channels_last)
            masks = masks.to(device, non_blocking=pin)  # (B, 2, 11, 10)
            probs = probs.to(device, non_blocking=pin)  # (B, 220)
            targets = targets.to(device, non_blocking=pin)  # (B,) value targets
            lr = learning_rate(settings, step)
            learning_rates.append(lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast:
                logits, value = model(boards, masks)  # (B, 220), (B, 1)
            # Illegal logits are -1e32 and their targets 0, so they add exactly 0.
            policy_loss = -(probs * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()
            value_loss = F.mse_loss(value.float().squeeze(1), targets)
            optimizer.zero_grad(set_to_none=True)
            (policy_loss + value_loss).backward()
            optimizer.step()
            step += 1
            if lock_lost is not None and lock_lost():
                raise NotOwnerError(
                    f"training lock lost at step {i + 1} of {len(batches)}: "
                    f"checkpoint {base + 1} abandoned"
                )
            b = len(targets)
            samples += b
            epoch_samples += b
            step_losses[i] = torch.stack([policy_loss.detach(), value_loss.detach()])
            sums += step_losses[i] * b
            if (i + 1) % per_epoch == 0 or i + 1 == len(batches):
                p, v = (x / epoch_samples for x in sums.tolist())
                losses.append(
                    {"epoch": len(losses), "step": step, "policy": p, "value": v, "loss": p + v}
                )
                sums.zero_()
                epoch_samples = 0
    if cuda:
        torch.cuda.synchronize()
    t_end = time.perf_counter()

    stats: dict[str, Any] = {
        "checkpoint": base + 1,
        "base_checkpoint": base,
        "mode": settings.training_mode,
        "start": started,
        "end": _now(),
        "examples_total": total,
        "examples_window": len(window),
        "epochs": settings.num_epochs if settings.training_mode == "window" else 0,
        "steps": 1 if settings.training_mode == "replay" else 0,
        "batches": len(batches),
        "batch_size": settings.batch_size,
        "samples": samples,
        "losses": losses,
        "optimizer": settings.optimizer,
        "optimizer_step": step,
        "learning_rate": lr,
        "device": str(device),
        "load_s": round(t_loaded - t0, 3),
        "train_s": round(t_end - t_loop, 3),
        "duration_s": round(t_end - t0, 3),
        "samples_per_s": round(samples / max(t_end - t_loop, 1e-9), 1),
    }
    opt_state = {
        "optimizer": settings.optimizer,
        "step": step,
        "state": _to_cpu(optimizer.state_dict()),
    }
    repo.save(
        base + 1,
        model,
        params,
        optimizer_state=opt_state,
        settings=settings,
        stats=stats,
        still_owner=still_owner,
    )
    tensorboard_events.log_training(settings, stats, step_losses.tolist(), learning_rates, pipeline)
    return stats
