"""Result records: one folder per run, named from its config, written atomically, checked on read.

``<results_dir>/records/<run_id>/record.json`` is only ever replaced whole (write to a temp file, fsync,
``os.replace``), carries a schema version and a checksum of its own content, and a finished one is never
overwritten. An flock on ``.lock`` keeps two processes off the same run; the kernel drops it if the
holder dies, so a killed run can be resumed at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from sora.errors import UserError

SCHEMA_VERSION = 1
# keys that do not change what is computed: two runs differing only here are the same run
NON_IDENTITY_KEYS = ("results_dir", "logger", "progress", "train.save_steps", "data.dir", "hydra")


def run_id(cfg) -> str:
    """``<task>-<method>-<model>-s<seed>-<hash>``: the same resolved config always maps to the same place."""
    container = OmegaConf.to_container(cfg, resolve=True)
    if (container.get("scheduler") or {}).get("name", "none") == "none":
        container.pop("scheduler", None)  # the default adds nothing: ids of ordinary runs stay as they were
    for key in NON_IDENTITY_KEYS:
        parent, _, leaf = key.rpartition(".")
        node = container
        for part in filter(None, parent.split(".")):
            node = node.get(part, {})
        if isinstance(node, dict):
            node.pop(leaf, None)
    digest = hashlib.sha1(json.dumps(container, sort_keys=True).encode()).hexdigest()[:10]
    return f"{cfg.task.name}-{cfg.method.name}-{cfg.model.name}-s{cfg.seed}-{digest}"


def _clean(obj):
    """NaN/inf -> None so the file is strict JSON (readers map None back to NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def json_line(obj) -> str:
    """One strict-JSON line (NaN -> null): the format of ``metrics.jsonl``."""
    return json.dumps(_clean(obj)) + "\n"


def _checksum(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write beside the target, fsync, then rename: readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_record(path: Path, record: dict) -> None:
    record = _clean({**record, "schema_version": SCHEMA_VERSION})
    record["checksum"] = _checksum(record)
    try:
        atomic_write_text(path, json.dumps(record, indent=2, sort_keys=False) + "\n")
    except OSError as exc:
        raise UserError(f"could not write record {path} ({exc.strerror or exc}); free disk space or "
                        f"choose another results_dir; the previous file, if any, is untouched") from None


class CorruptRecord(Exception):
    def __init__(self, path: Path, why: str):
        super().__init__(f"{path}: {why}")
        self.path, self.why = path, why


def read_record(path: Path) -> dict:
    """A verified record, or CorruptRecord naming the path and what is wrong with it."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CorruptRecord(path, f"unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(record, dict):
        raise CorruptRecord(path, "not a JSON object")
    if record.get("schema_version") != SCHEMA_VERSION:
        raise CorruptRecord(path, f"schema_version {record.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    if record.get("checksum") != _checksum(record):
        raise CorruptRecord(path, "checksum mismatch (edited or truncated)")
    return record


class RunLock:
    """Exclusive, non-blocking flock on ``<run_dir>/.lock``; ``acquired`` is False if another process runs it."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.fd = None
        self.acquired = False

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.acquired = True
        except BlockingIOError:
            self.acquired = False
        return self

    def __exit__(self, *exc):
        if self.acquired:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
