"""The model repository (layout compatible with the original project) and model publishing.

``<base>/models/flagz/<name>/checkpoints/<N>/`` holds model.pt (state_dict),
model.pt.params (JSON of ModelParams), scriptmodule.pt (TorchScript), optimizer.pt
(optimiser state and step counters), settings.json and stats.json. A checkpoint is
written into a temporary directory next to its final place, fsynced and renamed, so it
appears complete or not at all; temporary directories (``.tmp-*``) are never listed.

Workers on other machines have no shared disk: :meth:`ModelRepository.publish` puts the
TorchScript bytes in Redis (``Keys.model_bytes``) and then announces the checkpoint
(``Keys.latest_model``); :func:`hexz_tasks.model_source.fetch_latest` reads them back.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import torch
from celery.exceptions import SoftTimeLimitExceeded

from hexz_tasks.files import fsync_dir, write_synced
from hexz_tasks.keys import Keys
from hexz_tasks.model import HexzNet, ModelError, ModelParams, make_model, to_scriptmodule_bytes
from hexz_tasks.settings import Settings

# Published TorchScript bytes kept in Redis besides the newest (older ones are deleted).
KEEP_PUBLISHED = 4


class CheckpointError(ModelError):
    """A checkpoint file is missing or corrupt; the message names the file."""


class NotOwnerError(RuntimeError):
    """The writer lost its right to write the checkpoint (e.g. the training lock)."""


def params_from_settings(settings: Settings) -> ModelParams:
    try:
        return ModelParams(settings.model_type, settings.model_blocks, settings.model_filters)
    except ModelError as e:
        raise ModelError(f"HEXZ_MODEL_TYPE/BLOCKS/FILTERS: {e}") from None


class ModelRepository:
    def __init__(self, base_dir: Path | str, name: str) -> None:
        self.base_dir = Path(base_dir)
        self.name = name
        self.model_dir = self.base_dir / "models" / "flagz" / name
        self.checkpoints_dir = self.model_dir / "checkpoints"

    def checkpoint_dir(self, n: int) -> Path:
        return self.checkpoints_dir / str(n)

    @property
    def examples_store_dir(self) -> Path:
        """Where the trainer keeps its on-disk example dataset."""
        return self.model_dir / "examples-store"

    def checkpoints(self) -> list[int]:
        """Complete checkpoints, ascending."""
        try:
            names = os.listdir(self.checkpoints_dir)
        except FileNotFoundError:
            return []
        return sorted(int(d) for d in names if d.isdigit())

    def latest(self) -> int | None:
        cps = self.checkpoints()
        return cps[-1] if cps else None

    def latest_checkpoint(self) -> int:
        latest = self.latest()
        if latest is None:
            raise FileNotFoundError(f"no checkpoint in {self.checkpoints_dir}")
        return latest

    def ensure_initial(self, params: ModelParams, settings: Settings | None = None) -> int:
        """Creates checkpoint 0 (random weights) if the model has none; returns the latest."""
        latest = self.latest()
        if latest is not None:
            return latest
        try:
            self.save(0, make_model(params), params, settings=settings, stats={"examples_total": 0})
        except FileExistsError:
            pass  # another process (trainer or server) created it first: use theirs
        return self.latest_checkpoint()

    def ensure_initial_checkpoint(self, settings: Settings) -> int:
        return self.ensure_initial(params_from_settings(settings), settings)

    def save(
        self,
        n: int,
        model: torch.nn.Module,
        params: ModelParams,
        *,
        optimizer_state: dict[str, Any] | None = None,
        settings: Settings | None = None,
        stats: dict[str, Any] | None = None,
        still_owner: Callable[[], bool] | None = None,
    ) -> Path:
        """Writes checkpoint `n` atomically. If it already exists (another trainer won the
        race) the new one is discarded and FileExistsError raised.

        `still_owner` is asked right before the rename that makes the checkpoint appear;
        if it says False (or raises), nothing is left behind and NotOwnerError is raised.
        """
        self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temps()
        final = self.checkpoint_dir(n)
        if final.exists():
            raise FileExistsError(f"checkpoint {final} exists")
        tmp = self.checkpoints_dir / f".tmp-{n}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            files: dict[str, bytes] = {
                "model.pt": _torch_bytes(state),
                "model.pt.params": json.dumps(params.to_dict()).encode(),
                "scriptmodule.pt": to_scriptmodule_bytes(_cpu_copy(model, params)),
            }
            if optimizer_state is not None:
                files["optimizer.pt"] = _torch_bytes(optimizer_state)
            if settings is not None:
                files["settings.json"] = settings.to_json().encode()
            if stats is not None:
                files["stats.json"] = json.dumps(stats, indent=2).encode()
            for name, data in files.items():
                write_synced(tmp / name, data)
            fsync_dir(tmp)
            if still_owner is not None and not _asks_true(still_owner):
                raise NotOwnerError(f"not the owner any more: checkpoint {n} discarded")
            try:
                os.rename(tmp, final)
            except OSError as e:  # the final directory appeared meanwhile (ENOTEMPTY/EEXIST)
                raise FileExistsError(f"checkpoint {final} exists") from e
            fsync_dir(self.checkpoints_dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    def _remove_stale_temps(self) -> None:
        """Deletes temporary directories of trainers on this machine that died mid-save."""
        for d in self.checkpoints_dir.glob(".tmp-*"):
            try:
                pid = int(d.name.split("-")[2])
                os.kill(pid, 0)
            except ProcessLookupError:
                shutil.rmtree(d, ignore_errors=True)
            except (ValueError, IndexError, PermissionError):
                continue

    # --- reading ---
    def _file(self, n: int, name: str) -> Path:
        path = self.checkpoint_dir(n) / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint file missing: {path}")
        return path

    def load_params(self, n: int) -> ModelParams:
        path = self._file(n, "model.pt.params")
        try:
            return ModelParams.from_dict(json.loads(path.read_text()))
        except (ModelError, ValueError, TypeError) as e:
            raise CheckpointError(f"corrupt checkpoint file {path}: {e}") from e

    def load_model(self, n: int, device: str = "cpu") -> HexzNet:
        params = self.load_params(n)
        path = self._file(n, "model.pt")
        model = make_model(params)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except SoftTimeLimitExceeded:  # the task's time is up: the file is not corrupt
            raise
        except Exception as e:  # torch raises many types for corrupt files
            raise CheckpointError(f"corrupt checkpoint file {path}: {e}") from e
        return model.to(device)

    def load_optimizer_state(self, n: int) -> dict[str, Any] | None:
        path = self.checkpoint_dir(n) / "optimizer.pt"
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except SoftTimeLimitExceeded:
            raise
        except Exception as e:
            raise CheckpointError(f"corrupt checkpoint file {path}: {e}") from e

    def load_stats(self, n: int) -> dict[str, Any]:
        path = self.checkpoint_dir(n) / "stats.json"
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except ValueError as e:
            raise CheckpointError(f"corrupt checkpoint file {path}: {e}") from e

    def scriptmodule_path(self, n: int) -> Path:
        return self._file(n, "scriptmodule.pt")

    def scriptmodule_bytes(self, n: int) -> bytes:
        return self.scriptmodule_path(n).read_bytes()

    # --- publishing ---
    def publish(self, r: redis.Redis, keys: Keys, n: int) -> None:
        """Stores checkpoint n's TorchScript bytes in Redis, then announces it as latest."""
        data = self.scriptmodule_bytes(n)
        r.set(keys.model_bytes(self.name, n), data)
        r.set(keys.latest_model, json.dumps({"name": self.name, "checkpoint": n}))
        old = [keys.model_bytes(self.name, c) for c in self.checkpoints() if c < n - KEEP_PUBLISHED]
        if old:
            r.delete(*old)


def fetch_model_bytes(r: redis.Redis, keys: Keys, name: str, checkpoint: int) -> bytes | None:
    """TorchScript bytes of a published checkpoint (None once it was retired)."""
    return r.get(keys.model_bytes(name, checkpoint))


def _asks_true(check: Callable[[], bool]) -> bool:
    try:
        return bool(check())
    except Exception:  # e.g. Redis unreachable: ownership cannot be shown
        return False


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _cpu_copy(model: torch.nn.Module, params: ModelParams) -> HexzNet:
    """A CPU copy in contiguous format, so the TorchScript file loads anywhere."""
    m = make_model(params)
    m.load_state_dict({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    return m
