"""The committed protobuf code is generated from hexz_tasks/hexz.proto and matches the spec."""

import subprocess
import sys
from pathlib import Path

from hexz_tasks import hexz_pb2

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ["hexz_pb2.py", "hexz_pb2.pyi", "hexz_pb2_grpc.py"]


def test_generated_code_is_up_to_date(tmp_path):
    (tmp_path / "hexz_tasks").mkdir()
    (tmp_path / "hexz_tasks" / "hexz.proto").write_bytes(
        (ROOT / "hexz_tasks/hexz.proto").read_bytes()
    )
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", ".", "--python_out=.", "--pyi_out=.",
         "--grpc_python_out=.", "hexz_tasks/hexz.proto"],
        cwd=tmp_path, check=True,
    )  # fmt: skip
    for name in GENERATED:
        fresh = (tmp_path / "hexz_tasks" / name).read_text()
        assert fresh == (ROOT / "hexz_tasks" / name).read_text(), (
            f"{name} is stale: regenerate with python -m grpc_tools.protoc -I . --python_out=. "
            "--pyi_out=. --grpc_python_out=. hexz_tasks/hexz.proto"
        )


def test_field_numbers_match_the_wire_format():
    ex = hexz_pb2.TrainingExample.DESCRIPTOR.fields_by_name
    expected = {"board": 2, "move_probs": 3, "result": 4, "action_mask": 8, "model_key": 11}
    assert {name: ex[name].number for name in expected} == expected
    stats = hexz_pb2.TrainingExample.Stats.DESCRIPTOR.fields_by_name
    assert stats["max_visit_count_per_depth"].number == 14
    assert stats["selected_child_q"].number == 13
    assert hexz_pb2.SuggestMoveStats.Score.DESCRIPTOR.fields_by_name["score"].number == 2
    assert hexz_pb2.DESCRIPTOR.package == "hexzpb"
    svc = hexz_pb2.DESCRIPTOR.services_by_name
    assert set(svc) == {"TrainingService", "CPUPlayerService"}
    assert [m.name for m in svc["TrainingService"].methods] == [
        "AddTrainingExamples", "FetchModel", "ControlEvents",
    ]  # fmt: skip


def test_hand_encoded_wire_bytes_parse():
    # Fields 1 (varint), 4 (fixed32 float), 6, 7 (varints), 11 (ModelKey{name, checkpoint}),
    # encoded by hand from the wire-format table, as another implementation would send them.
    wire = bytes.fromhex("08c0843d25000080bf300138015a080a04736574681004")
    ex = hexz_pb2.TrainingExample.FromString(wire)
    assert ex.unix_micros == 1_000_000 and ex.result == -1.0
    assert ex.encoding == hexz_pb2.TrainingExample.PYTORCH and ex.turn == 1
    assert (ex.model_key.name, ex.model_key.checkpoint) == ("seth", 4)
    assert ex.SerializeToString() == wire
