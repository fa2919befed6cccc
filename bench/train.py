"""Training data path benchmark (issue 6).

Measures, in one run, on self-play games of the real engine (a random stand-in for the
network, 800 runs per move: tests/synthetic.py):
- bytes per example: in Redis (compressed blob per game) and on disk (.npz chunk),
  next to the protobuf size with NUMPY arrays;
- ingest: examples per second stored by two producer processes calling add_game with
  each game's columns (what a self-play worker does once the engine hands it a game);
- edge_ingest_examples_per_s: protobuf TrainingExamples validated and converted to
  columns per second, one process (what AddTrainingExamples and `hexz import` add);
- drain: examples per second moved from Redis to the on-disk dataset (with archives);
- window_1m_load_s: loading the newest 2**20 examples of a synthetic on-disk dataset;
- train_samples_per_s: the real trainer (chunks on disk -> window -> prefetched batches
  -> model step, training.train_checkpoint) vs bare_samples_per_s: the same model step
  on tensors already in memory; ratio = train / bare. Bare steps run before and after
  the trainer and are averaged, so drift in machine load hits both.

Last line: one JSON object. --quick: batch 64 instead of 4096 (batch_size in the JSON),
fewer games and steps. The machine's other load shows in the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.private_redis import private_redis
from hexz_tasks import codec
from hexz_tasks.dataset import Dataset
from hexz_tasks.examples import from_columns, to_columns
from hexz_tasks.keys import Keys
from hexz_tasks.progress import bar, timed
from hexz_tasks.settings import Settings
from hexz_tasks.store import ExampleStore
from tests.synthetic import game_columns

WINDOW = 1 << 20
CHUNK = 1 << 16


def sizes(games: list[codec.Columns], tmp: Path) -> dict[str, float]:
    n = sum(map(codec.num_rows, games))
    examples = [e for g in games for e in from_columns(g)]
    proto = sum(len(e.SerializeToString()) for e in examples)
    blobs = sum(len(codec.to_blob(g)) for g in games)
    ds = Dataset(tmp / "sizes")
    chunk = ds.append(codec.concat(games), None)
    start = time.perf_counter()
    to_columns(examples, "bench")
    edge_s = time.perf_counter() - start
    return {
        "bytes_per_example": round(blobs / n, 1),
        "bytes_per_example_disk": round(chunk.path.stat().st_size / n, 1),
        "proto_bytes_per_example": round(proto / n, 1),
        "edge_ingest_examples_per_s": round(n / edge_s, 1),
    }


def _producer(
    url: str, prefix: str, path: str, seconds: float, q: mp.Queue, go: Any, start_at: Any
) -> None:
    import redis

    games = [codec.from_blob(b) for b in np.load(path, allow_pickle=False)["games"]]
    store = ExampleStore(redis.Redis.from_url(url), Keys(prefix), max_pending=10**8)
    pid = os.getpid()
    q.put("ready")
    go.wait()
    while time.time() < start_at.value:
        time.sleep(0.001)
    added, i = 0, 0
    cpu0 = time.process_time()
    while time.time() < start_at.value + seconds:
        added += store.add_game(f"{pid}-{i}", games[i % len(games)])
        i += 1
    q.put((added, time.time(), time.process_time() - cpu0))


def ingest(url: str, games: list, seconds: float, tmp: Path) -> dict[str, float]:
    """Two producer processes store games for `seconds`; then one drain of all of it."""
    import redis

    path = tmp / "games.npz"
    np.savez(path, games=np.array([codec.to_blob(g) for g in games], dtype=bytes))
    prefix = f"hexzbench-{uuid.uuid4().hex[:8]}"
    ctx = mp.get_context("spawn")
    q, go, shared_start = ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    procs = [
        ctx.Process(target=_producer, args=(url, prefix, str(path), seconds, q, go, shared_start))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    for _ in procs:  # both have imported everything and loaded their games
        assert q.get(timeout=300) == "ready"
    start_at = shared_start.value = time.time() + 0.2  # both start together
    go.set()
    with timed("ingest", seconds + 0.2):
        results = [q.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    client = redis.Redis.from_url(url)
    store = ExampleStore(client, Keys(prefix), settle_ms=0)  # drain all of it now
    total = sum(r[0] for r in results)
    elapsed = max(r[1] for r in results) - start_at
    try:
        assert store.total_examples() == total
        t0 = time.perf_counter()
        moved = store.drain(Dataset(tmp / "drain"))
        drain_s = time.perf_counter() - t0
        assert moved == total
    finally:
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
    cpu_us = sum(r[2] for r in results) / total * 1e6
    return {
        "ingest_examples_per_s": round(total / elapsed, 1),
        "ingest_examples": total,
        # Producer CPU per stored example (blob + Redis call): machine load aside,
        # one core stores 1e6 / this many examples per second.
        "ingest_producer_cpu_us_per_example": round(cpu_us, 1),
        "drain_examples_per_s": round(moved / drain_s, 1),
    }


def synthetic_dataset(root: Path, games: list[codec.Columns], n: int) -> Dataset:
    """n examples on disk, fast: one chunk of tiled real-looking examples, copied."""
    base = codec.concat(games)
    tiled = codec.concat([base] * -(-CHUNK // codec.num_rows(base)))
    cols = codec.take_rows(tiled, np.arange(CHUNK))
    ds = Dataset(root)
    first = ds.append(cols, "0-1")
    for seq in range(1, n // CHUNK):
        shutil.copyfile(first.path, root / first.path.name.replace("00000000", f"{seq:08d}"))
    return ds


def bare_steps(model, batch_size: int, steps: int) -> float:
    """Samples per second of the bare model step (same loss and optimiser as the trainer)."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    boards = torch.from_numpy(rng.integers(0, 3, (batch_size, 11, 11, 10)).astype(np.float32))
    masks = torch.from_numpy(rng.random((batch_size, 2, 11, 10)) < 0.4)
    probs = torch.softmax(torch.randn(batch_size, 220).masked_fill(~masks.flatten(1), -1e32), 1)
    results = torch.from_numpy(rng.choice([-1.0, 0.0, 1.0], batch_size).astype(np.float32))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        logits, value = model(boards, masks)
        loss = -(probs * F.log_softmax(logits.float(), 1)).sum(1).mean()
        loss = loss + F.mse_loss(value.float().squeeze(1), results)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return batch_size * steps / (time.perf_counter() - t0)


def training_ratio(
    ds: Dataset, tmp: Path, batch_size: int, steps: int, rounds: int, blocks: int, filters: int
) -> dict:
    """Alternates bare model steps and real training runs; medians and per-round ratios."""
    import torch

    from hexz_tasks.model import ModelParams, make_model
    from hexz_tasks.repository import ModelRepository
    from hexz_tasks.training import train_checkpoint

    settings = Settings(
        data_dir=tmp / "repo",
        model_blocks=blocks,
        model_filters=filters,
        batch_size=batch_size,
        num_epochs=1,
        training_examples_window_size=batch_size * steps,
    )
    params = ModelParams("conv2d", blocks, filters)
    repo = ModelRepository(settings.repo_base_dir, settings.model_name)
    repo.ensure_initial(params, settings)
    torch.manual_seed(0)
    bare_model = make_model(params)
    bare_steps(bare_model, batch_size, 1)  # warm-up
    # Bare, trainer, bare, trainer, ..., bare: each trainer run is compared with the bare
    # runs just before and after it, so drifting machine load hits both sides alike.
    bare = [bare_steps(bare_model, batch_size, steps)]
    trained, ratios = [], []
    for n in (shown := bar(rounds, "training rounds", unit="round", iterable=range(rounds))):
        stats = train_checkpoint(settings, repo, ds, n, 0)
        bare.append(bare_steps(bare_model, batch_size, steps))
        trained.append(stats["samples_per_s"])
        ratios.append(trained[-1] / ((bare[-2] + bare[-1]) / 2))
        shown.write(
            f"round {n}: trainer {trained[-1]:.1f}/s, bare {bare[-2]:.1f} {bare[-1]:.1f}",
            file=sys.stderr,
        )
    return {
        "ratio": round(float(np.median(ratios)), 3),
        "train_samples_per_s": round(float(np.median(trained)), 1),
        "bare_samples_per_s": round(float(np.median(bare)), 1),
        "bare_per_run": [round(x, 1) for x in bare],
        "ratios_per_round": [round(r, 3) for r in ratios],
        "trainer_window_load_s": stats["load_s"],
        "train_steps_per_round": stats["batches"],
        "batch_size": batch_size,
        "model": f"conv2d {blocks} blocks {filters} filters",
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="under a minute: batch 64, few steps")
    ap.add_argument(
        "--redis-url",
        default=os.environ.get("HEXZ_REDIS_URL"),
        help="a Redis to measure ingest on (default: a private redis-server of this run)",
    )
    args = ap.parse_args()
    batch, steps, rounds = (64, 2, 5) if args.quick else (4096, 1, 5)
    out: dict = {"quick": args.quick}
    tmp = Path(tempfile.mkdtemp(prefix="hexz-bench-train-"))
    try:
        games = game_columns(8 if args.quick else 24, seed=0, runs=800)
        out.update(sizes(games, tmp))
        print(f"sizes: {out}", file=sys.stderr)
        ingest_s = 3.0 if args.quick else 10.0
        if args.redis_url:
            out.update(ingest(args.redis_url, games, ingest_s, tmp))
        else:
            with private_redis(tmp / "redis") as url:
                out.update(ingest(url, games, ingest_s, tmp))
        print(f"ingest: {out}", file=sys.stderr)
        ds = synthetic_dataset(tmp / "window", games, WINDOW)
        t0, c0 = time.perf_counter(), time.process_time()
        w = ds.window(WINDOW)
        out["window_1m_load_s"] = round(time.perf_counter() - t0, 3)
        out["window_1m_load_cpu_s"] = round(time.process_time() - c0, 3)
        assert len(w) == WINDOW
        del w
        print(f"window: {out['window_1m_load_s']} s", file=sys.stderr)
        out.update(training_ratio(ds, tmp, batch, steps, rounds, 5, 128))
        out["device"] = "cpu"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
