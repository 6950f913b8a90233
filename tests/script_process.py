"""The project's scripts in real child processes that skip the imports (tests only).

Every fresh Python on the 2-core CI machine pays ~7 s importing torch + transformers + peft before a script does
anything, and the suite starts dozens of script processes. ``run`` and ``start`` fork each one from a
multiprocessing *forkserver* that imported those modules once per pytest worker (it never ran an op, so forking it
is safe). The child is still a process of its own, with its own pid, exit code, signals (SIGKILL, SIGTERM, SIGUSR2)
and stdout/stderr, running the script as ``__main__`` with the argv, environment and working directory asked for.

What a fork cannot give goes to a fresh interpreter instead, so a test never runs in the wrong world: anything but
``python <a .py file>`` (``-c``, ``-m``, ``make``, ``torchrun``), and an environment that differs from the server's
in a variable read at import time (``HF_HUB_OFFLINE``, ``HF_HOME``, ...). ``SORA_TEST_FORK=0`` sends every script
to a fresh interpreter.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

PRELOAD = ["torch", "transformers", "peft", "hydra", "omegaconf", "pandas", "sora.cli", "sora.config",
           "sora.train.loop", "tests.script_process"]
IMPORT_TIME_ENV = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TORCH", "PYTORCH_", "PYTHON", "CUDA_", "TOKENIZERS_")
_SERVER_ENV: dict[str, str] | None = None


def run(argv, *, env=None, cwd=None, timeout=None, capture_output=False, text=False, **kwargs
        ) -> subprocess.CompletedProcess:
    """``subprocess.run`` for ``[sys.executable, script, *args]``."""
    if not _forkable(argv, env, kwargs):
        return subprocess.run(argv, env=env, cwd=cwd, timeout=timeout, capture_output=capture_output, text=text,
                              **kwargs)
    proc = start(argv, env=env, cwd=cwd, text=text,
                 stdout=subprocess.PIPE if capture_output else None,
                 stderr=subprocess.PIPE if capture_output else None)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # as subprocess.run does: a hung script never outlives its test
        proc.wait()
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def start(argv, *, env=None, cwd=None, stdout=None, stderr=None, text=False, **kwargs):
    """``subprocess.Popen`` for ``[sys.executable, script, *args]`` (``stdout``/``stderr``: None, PIPE, DEVNULL)."""
    if not _forkable(argv, env, kwargs):
        return subprocess.Popen(argv, env=env, cwd=cwd, stdout=stdout, stderr=stderr, text=text, **kwargs)
    return ForkedScript(argv, env, cwd, stdout, stderr, text)


class ForkedScript:
    """What the tests use of ``subprocess.Popen``: pid, poll, wait, returncode, communicate, stderr.

    ``returncode`` is the exit status, or ``-signal`` for a process a signal ended, as Popen reports it."""

    def __init__(self, argv, env, cwd, stdout, stderr, text):
        global _SERVER_ENV
        ctx = multiprocessing.get_context("forkserver")
        if _SERVER_ENV is None:
            _SERVER_ENV = dict(os.environ)
            ctx.set_forkserver_preload(PRELOAD)
        self._tmp = tempfile.TemporaryDirectory(prefix="script-")
        self._text = text
        self._paths = [self._stream_path(kind, name) for kind, name in ((stdout, "out"), (stderr, "err"))]
        self.args = list(argv)
        self._proc = ctx.Process(target=_script_main, args=(
            str(argv[1]), [str(a) for a in argv[2:]], dict(os.environ if env is None else env),
            str(cwd or os.getcwd()), *self._paths))
        self._proc.start()
        self.pid = self._proc.pid
        self.returncode = None
        self.stderr = _LateFile(self._paths[1], text) if stderr == subprocess.PIPE else None

    def _stream_path(self, kind, name) -> str | None:
        if kind == subprocess.DEVNULL:
            return os.devnull
        if kind == subprocess.PIPE:
            return str(Path(self._tmp.name) / name)
        return None  # inherited: the child writes where the forkserver writes

    def poll(self):
        if self.returncode is None and self._proc.exitcode is not None:
            self.returncode = self._proc.exitcode
        return self.returncode

    def wait(self, timeout=None):
        self._proc.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def communicate(self, timeout=None):
        self.wait(timeout)
        return tuple(_read(path, self._text) if path not in (None, os.devnull) else None for path in self._paths)

    def kill(self):
        self._proc.kill()


class _LateFile:
    """``proc.stderr.read()`` after the process ended (its output went to a file, not a pipe)."""

    def __init__(self, path: str, text: bool):
        self._path, self._text = path, text

    def read(self):
        return _read(self._path, self._text)


def _read(path: str, text: bool):
    """What a script wrote to a captured stream (nothing yet: empty)."""
    data = Path(path).read_bytes() if Path(path).exists() else b""
    return data.decode(errors="replace") if text else data


def _forkable(argv, env, kwargs) -> bool:
    if os.environ.get("SORA_TEST_FORK") == "0" or kwargs or len(argv) < 2:
        return False
    if str(argv[0]) != sys.executable or not str(argv[1]).endswith(".py"):
        return False
    wanted = os.environ if env is None else env
    server = os.environ if _SERVER_ENV is None else _SERVER_ENV  # the server starts from this process's environment
    keys = {k for k in (*wanted, *server) if k.startswith(IMPORT_TIME_ENV)}
    return all(wanted.get(k) == server.get(k) for k in keys)


def _script_main(script: str, args: list[str], env: dict, cwd: str, out: str | None, err: str | None) -> None:
    """In the forked child: the environment, directory, stdio and argv of ``python script *args``, then the
    script as ``__main__``; its exit status is the process's."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        if path is not None:
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(target, fd)
            os.close(target)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
    if env.get("OMP_NUM_THREADS"):  # torch's OpenMP read the server's value at import
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    script_path = str(Path(cwd, script))
    sys.argv = [script, *args]
    sys.path.insert(0, str(Path(script_path).parent))  # as `python script` puts the script's folder first
    code = 0
    try:
        runpy.run_path(script_path, run_name="__main__")
    except SystemExit as exc:
        code = _exit_status(exc.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            pass
    os._exit(code)


def _exit_status(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
