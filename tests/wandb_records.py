"""Read what an offline W&B run logged, from its ``run-*.wandb`` file (no W&B server, no wandb API).

The file is W&B's record log: a 7-byte header, then 32 KiB blocks of chunks, each ``crc (4) | length (2) |
type (1) | data`` with type 1 = a whole record, 2/3/4 = first/middle/last piece; every record is a
``wandb_internal_pb2.Record`` protobuf.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7


def _records(data: bytes) -> list[bytes]:
    records, pending, position = [], b"", HEADER
    while position + 7 <= len(data):
        left = BLOCK - position % BLOCK
        if left < 7:
            position += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0:
            position += left
            continue
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        else:
            records.append(pending + chunk)
            pending = b""
    return records


def _complete_records(path: Path, timeout: float = 60.0) -> list[wandb_internal_pb2.Record]:
    """The run file's records once W&B has written its ``exit`` record: ``wandb.finish`` can return while
    W&B's service is still writing the file's last records (the run's final history row among them)."""
    deadline = time.monotonic() + timeout
    while True:
        records = []
        for raw in _records(path.read_bytes()):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            records.append(record)
        if any(record.WhichOneof("record_type") == "exit" for record in records):
            return records
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} has no exit record after {timeout} s: the run did not finish")
        time.sleep(0.2)


def logged_history(run_folder: Path) -> dict[str, list[str]]:
    """Every history key the run logged, with its values (JSON strings) in order."""
    (path,) = run_folder.glob("run-*.wandb")
    history: dict[str, list[str]] = {}
    for record in _complete_records(path):
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                history.setdefault(key, []).append(item.value_json)
    return history


def offline_runs(folder: Path) -> list[Path]:
    """The offline run folders W&B wrote under ``folder`` (its ``wandb/`` subfolder), oldest first."""
    return sorted(folder.glob("**/offline-run-*"))
