"""Read the history of an offline wandb run file (``run-*.wandb``) without the network or wandb internals.

The file is a LevelDB-style log (7-byte file header ':W&B' + magic + version, 32 KiB blocks, chunks with a
7-byte header: crc32 (4), length (2, little endian), type (1: full, 2: first, 3: middle, 4: last)); each
record is a ``wandb_internal_pb2.Record`` protobuf.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7


def records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a wandb run file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(pending)
            yield rec
            pending = b""


def history(path: Path) -> list[dict]:
    rows = []
    for rec in records(path):
        if rec.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in rec.history.item})
    return rows


def exit_code(path: Path) -> int | None:
    for rec in records(path):
        if rec.WhichOneof("record_type") == "exit":
            return rec.exit.exit_code
    return None


def wait_for_exit(path: Path, timeout: float = 90.0) -> None:
    """wandb's service appends a run's last records (the history flush, the exit record) to the file after
    ``finish()`` has returned; under CPU load that takes seconds. Wait for the exit record (a chunk caught half
    written does not parse: try again)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if exit_code(path) is not None:
                return
        except Exception:  # a record being written
            pass
        time.sleep(0.5)
