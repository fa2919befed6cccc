"""Archives: one gzip-compressed AddTrainingExamplesRequest per ``*.gz`` file.

``hexz print-request FILE`` summarises one, ``hexz import FILES...`` validates and adds
them to the example store (NUMPY or PYTORCH arrays; every example is checked by
hexz_tasks.validation, a bad file is rejected as a whole with a message naming the file
and the example; a file that decompresses to more than MAX_ARCHIVE_BYTES is refused),
``hexz export`` writes every stored example (the trainer's dataset plus what still waits
in Redis) back as archives.
"""

from __future__ import annotations

import gzip
import hashlib
import sys
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import redis
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from hexz_tasks import codec, hexz_pb2, progress
from hexz_tasks.dataset import Dataset
from hexz_tasks.examples import decode_array, from_columns, to_columns
from hexz_tasks.files import atomic_write
from hexz_tasks.keys import Keys
from hexz_tasks.layout import WIRE_CELL_TYPE_FLAG, policy_index
from hexz_tasks.redis_server import connect
from hexz_tasks.repository import ModelRepository
from hexz_tasks.settings import Settings
from hexz_tasks.store import IMPORT_DONE_TTL_S, ExampleStore
from hexz_tasks.validation import validate_examples

# Examples per store entry when importing (one Redis stream entry each).
IMPORT_BATCH = 4096
# The largest archive the trainer writes (one chunk of 65,536 examples, ~7.4 kB each)
# is ~0.5 GB decompressed; anything beyond twice that is refused before it is inflated.
MAX_ARCHIVE_BYTES = 1 << 30


class ArchiveTooLarge(ValueError):
    """An archive decompresses to more than allowed."""


def gunzip(data: bytes, max_bytes: int) -> bytes:
    """gzip.decompress that stops as soon as the output would exceed `max_bytes`."""
    out = bytearray()
    while data:
        d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        out += d.decompress(data, max_bytes + 1 - len(out))
        if len(out) > max_bytes or d.unconsumed_tail:
            raise ArchiveTooLarge(f"decompresses to more than {max_bytes} bytes")
        if not d.eof:
            raise EOFError("compressed file ended before the end-of-stream marker")
        data = d.unused_data.lstrip(b"\0")  # gzip pads members with zeros at times
    return bytes(out)


def read_request(
    path: Path, max_bytes: int = MAX_ARCHIVE_BYTES
) -> hexz_pb2.AddTrainingExamplesRequest:
    """Parses one archive; ValueError naming the file if it is not one or if it
    decompresses to more than `max_bytes`."""
    try:
        data = gunzip(Path(path).read_bytes(), max_bytes)
        return hexz_pb2.AddTrainingExamplesRequest.FromString(data)
    except (OSError, EOFError, zlib.error, DecodeError) as e:
        raise ValueError(f"{path}: not a gzip-compressed AddTrainingExamplesRequest: {e}") from e
    except ArchiveTooLarge as e:
        raise ValueError(f"{path}: {e}") from None


def write_request(path: Path, request: hexz_pb2.AddTrainingExamplesRequest) -> Path:
    return atomic_write(Path(path), gzip.compress(request.SerializeToString(), 6))


def print_request(path: Path) -> int:
    """Prints a summary of one archive (the first example in detail)."""
    req = read_request(path)
    one_line = {"as_one_line": True}
    print(f"file: {path}")
    print(f"execution_id: {req.execution_id or '-'}")
    wc = (
        text_format.MessageToString(req.worker_config, **one_line)
        if req.HasField("worker_config")
        else "-"
    )
    print(f"worker_config: {wc}")
    print(f"examples: {len(req.examples)}")
    if not req.examples:
        return 0
    ex = req.examples[0]
    enc = hexz_pb2.TrainingExample.Encoding.Name(ex.encoding)
    print(f"first example (encoding {enc}, turn {ex.turn}, result {ex.result:g}):")
    m = ex.move
    cell = hexz_pb2.Field.CellType.Name(m.cell_type)
    print(f"  move: player {m.player_num} move {m.move} at ({m.row}, {m.col}) {cell}")
    print(f"  model_key: {ex.model_key.name}:{ex.model_key.checkpoint}")
    print(f"  value: {ex.model_predictions.value:.4f}")
    print(f"  stats: {text_format.MessageToString(ex.stats, **one_line)}")
    if ex.model_predictions.priors:
        priors = decode_array(ex.model_predictions.priors, ex.encoding, "priors").reshape(-1)
        idx = policy_index(0 if m.cell_type == WIRE_CELL_TYPE_FLAG else 1, m.row, m.col)
        print(f"  prior of the chosen move: {priors[idx]:.4f}")
        legal = priors
        if ex.action_mask:
            mask = decode_array(ex.action_mask, ex.encoding, "action_mask").reshape(-1)
            legal = priors[mask]
        if len(legal):
            q = np.quantile(legal, [0, 0.25, 0.5, 0.75, 1])
            print(
                f"  prior quantiles over {len(legal)} legal moves (min/25/50/75/max): "
                + " ".join(f"{x:.4f}" for x in q)
            )
    return 0


def import_files(paths: Iterable[Path], store: ExampleStore) -> tuple[int, list[str]]:
    """Adds each valid archive to the store; returns (examples added, error messages).

    Idempotent: batches are keyed by the file's content hash, so importing a file twice
    (within store.IMPORT_DONE_TTL_S) adds it once.
    """
    added, errors = 0, []
    for path in paths:
        try:
            data = Path(path).read_bytes()
            req = read_request(path)
            if not req.examples:
                continue
            examples = validate_examples(req.examples, f"{path}: ")
            cols = to_columns(examples, str(path))
        except (OSError, ValueError) as e:
            errors.append(str(e))
            continue
        digest = hashlib.sha256(data).hexdigest()[:32]
        n = codec.num_rows(cols)
        for i, start in enumerate(range(0, n, IMPORT_BATCH)):
            part = codec.take_rows(cols, np.arange(start, min(n, start + IMPORT_BATCH)))
            added += store.add_encoded(
                f"import:{digest}:{i}",
                codec.num_rows(part),
                codec.to_blob(part),
                done_ttl_s=IMPORT_DONE_TTL_S,
            )
    return added, errors


def import_archives(paths: Sequence[Path], settings: Settings) -> int:
    """`hexz import`: exit status 0, or 1 if any file was rejected."""
    # Not waiting for the trainer: an import may come first, into a Redis it has not set up.
    store = ExampleStore.for_producer(
        settings, connect(settings), Keys(settings.key_prefix), full_wait_s=30.0,
        wait_for_trainer=False,
    )  # fmt: skip
    with progress.bar(len(paths), "import", unit="file", iterable=paths) as shown:
        added, errors = import_files(shown, store)
    for e in errors:
        print(f"rejected {e}", file=sys.stderr)
    print(f"imported {added} examples from {len(paths) - len(errors)} of {len(paths)} files")
    return 1 if errors else 0


def stored_columns(dataset: Dataset, store: ExampleStore | None) -> Iterator[codec.Columns]:
    """Every stored example: the dataset's chunks, then the entries Redis still holds."""
    for chunk in dataset.chunks():
        yield dataset.read_chunk(chunk)
    if store is not None:
        after = dataset.last_stream_id()
        while entries := store.pending_entries(after):
            for eid, cols in entries:
                yield cols
                after = eid


def export_to(
    out_dir: Path, columns: Iterator[codec.Columns], encoding: int, per_file: int
) -> tuple[int, int]:
    """Writes examples-NNNNNN.gz files of `per_file` examples; returns (examples, files)."""
    if per_file <= 0:
        raise ValueError(f"--per-file must be positive, got {per_file}")
    out_dir = Path(out_dir)
    total = files = 0

    def write(cols: codec.Columns) -> None:
        nonlocal total, files
        req = hexz_pb2.AddTrainingExamplesRequest(examples=from_columns(cols, encoding))
        write_request(out_dir / f"examples-{files:06d}.gz", req)
        files += 1
        total += codec.num_rows(cols)

    buf: list[codec.Columns] = []
    n = 0
    for cols in columns:
        buf.append(cols)
        n += codec.num_rows(cols)
        while n >= per_file:
            joined = codec.concat(buf)
            write(codec.take_rows(joined, np.arange(per_file)))
            buf = [codec.take_rows(joined, np.arange(per_file, n))]
            n -= per_file
    if n:
        write(codec.concat(buf))
    return total, files


def export_archives(
    out_dir: Path, settings: Settings, encoding: str = "numpy", per_file: int = 10_000
) -> int:
    """`hexz export`: writes the trainer's dataset and the undrained Redis entries."""
    enc = {"numpy": hexz_pb2.TrainingExample.NUMPY, "pytorch": hexz_pb2.TrainingExample.PYTORCH}
    if encoding not in enc:
        raise ValueError(f"encoding must be numpy or pytorch, got {encoding!r}")
    repo = ModelRepository(settings.repo_base_dir, settings.model_name)
    dataset = Dataset(repo.examples_store_dir)
    store: ExampleStore | None = ExampleStore(connect(settings), Keys(settings.key_prefix))
    try:
        store.redis.ping()
    except redis.RedisError as e:
        print(
            f"warning: Redis unreachable ({e}); exporting the on-disk dataset only", file=sys.stderr
        )
        store = None
    total = dataset.count() + (store.counters()["pending"] if store is not None else 0)
    with progress.bar(total, "export", unit="example") as shown:

        def counted(columns: Iterator[codec.Columns]) -> Iterator[codec.Columns]:
            for cols in columns:
                shown.update(codec.num_rows(cols))
                yield cols

        n, files = export_to(
            out_dir, counted(stored_columns(dataset, store)), enc[encoding], per_file
        )
    print(f"exported {n} examples to {files} files in {out_dir}")
    return 0
