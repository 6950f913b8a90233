"""The test helper that forks script runs from a preloaded server (tests/script_process.py) keeps what a fresh
``python script.py`` gives: argv, environment, working directory, stdout/stderr, exit status and signals; and it
sends to a fresh interpreter what a fork would get wrong (an import-time environment variable that differs)."""

import os
import signal
import subprocess
import sys
import time

from tests import script_process

SCRIPT = """import os, sys
print("preloaded" if "torch" in sys.modules else "fresh", os.getcwd(), os.environ.get("PROBE"), sys.argv[1:])
print("to stderr", file=sys.stderr)
if sys.argv[1:] == ["sleep"]:
    import time
    open("started", "w").write(str(os.getpid()))
    time.sleep(60)
sys.exit(int(os.environ.get("EXIT", "0")))
"""


def test_a_forked_script_gets_its_argv_env_cwd_stdio_and_exit_status(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PROBE": "yes", "EXIT": "3"}
    res = script_process.run([sys.executable, str(script), "a", "b"], env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=120)
    if os.environ.get("SORA_TEST_FORK") != "0":
        assert res.stdout.startswith("preloaded ")  # forked from the server: torch was already imported
    assert res.stdout.split(" ", 1)[1].strip() == f"{tmp_path} yes ['a', 'b']"
    assert res.stderr == "to stderr\n" and res.returncode == 3


def test_an_import_time_variable_that_differs_gets_a_fresh_interpreter(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "0" if os.environ.get("HF_HUB_OFFLINE") == "1" else "1"}
    res = script_process.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert res.stdout.startswith("fresh ") and res.returncode == 0


def test_a_started_script_is_a_process_a_signal_ends(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    proc = script_process.start([sys.executable, str(script), "sleep"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    assert proc.pid != os.getpid()
    deadline = time.time() + 60
    while time.time() < deadline and not (tmp_path / "started").exists():
        time.sleep(0.05)
    assert proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def test_a_script_past_its_timeout_is_killed(tmp_path):
    import pytest

    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    with pytest.raises(subprocess.TimeoutExpired):
        script_process.run([sys.executable, str(script), "sleep"], cwd=tmp_path, capture_output=True, timeout=3)
    pid = int((tmp_path / "started").read_text())  # the script got as far as its sleep
    deadline = time.time() + 10
    while time.time() < deadline and _alive(pid):
        time.sleep(0.05)
    assert not _alive(pid), "the timed-out script outlived its test"


def _alive(pid: int) -> bool:
    try:
        status = open(f"/proc/{pid}/status").read()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie has ended; only its parent has not reaped it yet
