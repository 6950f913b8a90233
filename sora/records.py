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
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

from omegaconf import OmegaConf

from sora.errors import UserError

SCHEMA_VERSION = 1
# keys that only say where and how a run is launched or watched: they never change its numbers
LAUNCH_ONLY_KEYS = ("results_dir", "logger", "progress", "train.save_steps", "train.save_minutes", "train.log_steps",
                    "data.cache_dir", "hydra")
# options added after records existed, dropped from the identity at their default so older run ids stay valid
NEUTRAL_DEFAULTS = {"train.attention": "eager", "train.compile": "off", "method.pattern_xi": None,
                    "method.pattern_seed": None, "data.pad_buckets": 0}
# train.compile was a bool before it named a mode: true ran what "default" runs
COMPILE_ALIASES = {False: "off", True: "default"}


def identity(cfg, data_fingerprint: str | None = None) -> dict:
    """Everything that changes a run's numbers: the resolved config without launch-only keys, with the data
    folder replaced by a fingerprint of the data it holds (two folders with the same files are one run; the
    hub sample and the full hub split are two)."""
    container = drop_launch_keys(OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg))
    _resolve_precision(container)
    data = dict(container.get("data") or {})
    if data_fingerprint is None:
        data_fingerprint = _fingerprint_for(container)
    data.pop("dir", None)
    data["fingerprint"] = data_fingerprint
    container["data"] = data
    return container


def _resolve_precision(container: dict) -> None:
    """``train.precision=auto`` is stored as what it resolves to on the run's device (``sora.device``)."""
    train = container.get("train")
    if isinstance(train, dict) and train.get("precision") == "auto":
        from sora.device import resolve_device, resolve_precision

        train["precision"] = resolve_precision("auto", resolve_device(container.get("device", "auto")))


def drop_launch_keys(container: dict, extra: tuple[str, ...] = ()) -> dict:
    """A resolved config (dict, changed in place) without what never changes a run's numbers: launch-only keys
    (and ``extra``), a scheduler of ``none``, options still at their neutral default."""
    if (container.get("scheduler") or {}).get("name", "none") == "none":
        container.pop("scheduler", None)  # the default adds nothing
    train = container.get("train")
    if isinstance(train, dict) and isinstance(train.get("compile"), bool):
        train["compile"] = COMPILE_ALIASES[train["compile"]]
    for key, default in NEUTRAL_DEFAULTS.items():
        section, leaf = key.split(".")
        node = container.get(section)
        if isinstance(node, dict) and leaf in node and node[leaf] == default:
            node.pop(leaf)
    for key in (*LAUNCH_ONLY_KEYS, *extra):
        parent, _, leaf = key.rpartition(".")
        node = container
        for part in filter(None, parent.split(".")):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return container


PACKAGES = ("torch", "transformers", "peft", "hydra-core", "datasets", "scikit-learn", "scipy", "numpy")


def package_versions() -> dict:
    """What the record's numbers were computed with (tables split configurations on these)."""
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def git_state() -> dict:
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
        return {"commit": sha.stdout.strip() or None, "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _fingerprint_for(container: dict) -> str:
    from sora.data.glue import data_fingerprint
    from sora.data.tasks import get_task

    data = container.get("data") or {}
    return data_fingerprint(get_task(container["task"]["name"]), data.get("dir"), data.get("revision"))


def run_id(cfg, data_fingerprint: str | None = None) -> str:
    """``<task>-<method>-<model>-s<seed>-<hash>``: the same identity always maps to the same place."""
    digest = hashlib.sha1(json.dumps(identity(cfg, data_fingerprint), sort_keys=True).encode()).hexdigest()[:10]
    return f"{cfg.task.name}-{cfg.method.name}-{cfg.model.name}-s{cfg.seed}-{digest}"


def finished_equivalent(results_dir, cfg, data_fingerprint: str) -> Path | None:
    """A finished record of this configuration and seed filed under another run id: its identity was written
    under older rules (e.g. before a new key's neutral default was left out), so the id differs but the run is
    the same. Re-running it would count the seed twice."""
    want = identity(cfg, data_fingerprint)
    prefix = f"{cfg.task.name}-{cfg.method.name}-{cfg.model.name}-s{cfg.seed}-"
    for path in sorted((Path(results_dir) / "records").glob(f"{prefix}*/record.json")):
        try:
            rec = read_record(path)
        except CorruptRecord:
            continue
        if rec.get("status") == "finished" and rec.get("identity") and current_identity(rec["identity"]) == want:
            return path
    return None


def current_identity(stored: dict) -> dict:
    """A stored identity re-reduced by today's rules (a neutral default an older version kept drops out)."""
    return drop_launch_keys(json.loads(json.dumps(stored)))


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
