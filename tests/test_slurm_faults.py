"""A sweep survives Slurm's faults: shown on a REAL one-node Slurm (opt-in: ``pytest -m slurm``, as root;
``make slurm-selftest`` starts the cluster and runs it).

Each test launches the same 6-run tiny sweep (conf/experiment/slurm_faults.yaml: cola, mrpc x sora, lora,
adalora; 80 steps of 0.3 s each, a checkpoint every 10 steps) through hydra-submitit-launcher as one job array,
lands one fault mid-run, and then requires: the multirun exits 0; every record is finished and equal - evals,
best metrics, ranks, params - to a clean local run of the same configs; and, counted from each run's log.txt
("step k computed" per optimizer step, "resumed <run> at step j" per restart), the optimizer steps done twice are
<= 1 per signalled interruption and <= train.save_steps (10) per unsignalled one.

Faults: ``scancel --signal=USR2`` (submitit's timeout/preemption signal), ``scancel --signal=TERM`` and a real
partition preemption (SIGTERM), ``scontrol requeue`` of a running array task, a node set DOWN then resumed, a
power cut (slurmd, slurmstepd and the runs kill -9'd, node DOWN: no signal at all), and ``--time`` (2 minutes).

Slurm holds a requeued job for 120 s (its BeginTime) before it may start again; a helper thread here shortens that
hold (``scontrol update StartTime=now``) to 10 s, 75 s after a node failure, so the suite takes minutes.
``SORA_SLURM_FAULTS=ci`` keeps the CI-sized subset: one sweep with USR2 + SIGTERM + ``scontrol requeue``, and one
partition preemption (~4 min; issue 28: the preemption is the fault whose requeue once raced).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from sora.records import read_record
from tests.conftest import ROOT

STEPS, SAVE_STEPS, NAME = 80, 10, "sora-faults"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
TRAIN = [sys.executable, str(ROOT / "scripts" / "train.py"), "-m", "experiment=slurm_faults"]
LAUNCHER = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=0",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.array_parallelism=6",
            f"hydra.launcher.name={NAME}"]
CI_ONLY = os.environ.get("SORA_SLURM_FAULTS") == "ci"


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root to start the one-node Slurm (scripts/slurm/start_slurm.sh); run make slurm-selftest as root"
    missing = [b for b in ("slurmctld", "slurmd", "sbatch", "munged") if shutil.which(b) is None]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge"
    return None


pytestmark = [pytest.mark.slurm, pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))]


def _sh(*cmd, check=True) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check and res.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {res.stderr.strip()}")
    return res.stdout


@pytest.fixture(scope="module")
def cluster():
    """The one-node cluster (8 CPU slots: the 6 runs at once), and the thread that lifts requeue holds."""
    acct = "1" if shutil.which("slurmdbd") else "0"
    env = {**os.environ, "SKIP_APT": "1", "SLURM_CPUS": "8", "SLURM_ACCOUNTING": acct}
    res = subprocess.run(["bash", str(ROOT / "scripts" / "slurm" / "start_slurm.sh")], env=env, capture_output=True,
                         text=True, timeout=300)
    if res.returncode:
        pytest.skip(f"could not start the one-node Slurm: {(res.stdout + res.stderr)[-1500:]}")
    stop = threading.Event()
    thread = threading.Thread(target=_lift_requeue_holds, args=(stop,), daemon=True)
    thread.start()
    yield _sh("hostname", "-s").strip()
    stop.set()
    thread.join()


HOLD_S = {"s": 10}  # how long a requeued job of ours stays held (Slurm: 120 s)


def _lift_requeue_holds(stop: threading.Event) -> None:
    """Start a requeued job of ours HOLD_S after its requeue (its SubmitTime), not 120 s. The hold exists so that
    the old run is gone first: lifted at once, a job started while its old step still ended got that step's exit
    and ended FAILED (seen here); and after a node failure slurmctld re-sends the old instance's kill about 60 s
    later, which killed a requeued job that had started again on the returned node (seen here)."""
    while not stop.wait(1):
        out = subprocess.run(["squeue", "-h", "-t", "PD", "-n", NAME, "-o", "%i %r %V"], capture_output=True, text=True)
        for line in out.stdout.splitlines():
            job, reason, since = line.split(" ", 2)
            if reason == "BeginTime" and time.time() - datetime.fromisoformat(since).timestamp() >= HOLD_S["s"]:
                subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], capture_output=True)


@pytest.fixture
def node_failure_hold():
    """Node failures: requeued jobs wait 75 s, past slurmctld's resent kill of their old instance."""
    HOLD_S["s"] = 75
    yield
    HOLD_S["s"] = 10


class Reference:
    """The same 6 configs, uninterrupted, locally (no sleep). Started at once and read when first needed: it
    runs while the first sweep's jobs start (~30 s saved)."""

    def __init__(self, out: Path):
        self.out, self._records = out, None
        self.proc = subprocess.Popen([*TRAIN, f"results_dir={out}", "hydra.callbacks.slow_steps.seconds=0"], env=ENV,
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def records(self) -> dict[str, dict]:
        """run id -> record."""
        if self._records is None:
            _, err = self.proc.communicate(timeout=900)
            assert self.proc.returncode == 0, err[-3000:]
            self._records = {p.parent.name: read_record(p) for p in self.out.glob("records/*/record.json")}
            assert len(self._records) == 6
        return self._records


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    ref = Reference(tmp_path_factory.mktemp("reference"))
    yield ref
    if ref.proc.poll() is None:
        ref.proc.kill()


class Sweep:
    """One multirun through the Slurm launcher, its client running in the background."""

    def __init__(self, results: Path, *overrides: str):
        self.results, self.t0 = results, time.time()
        self.out = open(results.parent / f"{results.name}.client.log", "w")
        self.client = subprocess.Popen([*TRAIN, f"results_dir={results}", *LAUNCHER, *overrides], env=ENV, cwd=ROOT,
                                       stdout=self.out, stderr=subprocess.STDOUT)

    def computed(self) -> dict[str, int]:
        """run id -> the last optimizer step its log says it computed."""
        out = {}
        for log in self.results.glob("records/*/log.txt"):
            steps = re.findall(r"step (\d+) computed", log.read_text())
            out[log.parent.name] = int(steps[-1]) if steps else 0
        return out

    def wait_all_at(self, step: int, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            done = self.computed()
            if len(done) == 6 and min(done.values()) >= step:
                return
            self._alive()
            time.sleep(0.2)
        raise AssertionError(f"runs did not reach step {step}: {self.computed()}")

    def job(self, rid: str) -> str:
        return json.loads((self.results / "records" / rid / "progress.json").read_text())["slurm_job"]

    def rid(self, task: str, method: str) -> str:
        return next(p.name for p in (self.results / "records").glob(f"{task}-{method}-*"))

    def finish(self, timeout: float = 600) -> float:
        try:
            rc = self.client.wait(timeout=timeout)
        finally:
            self.out.close()
        assert rc == 0, self._client_log()
        return time.time() - self.t0

    def _alive(self) -> None:
        assert self.client.poll() is None, f"the multirun exited early:\n{self._client_log()}"

    def _client_log(self) -> str:
        return (self.results.parent / f"{self.results.name}.client.log").read_text()[-4000:]


def interruptions(log: str, rid: str) -> list[dict]:
    """Each restart of a run, from its log: the signal that stopped the attempt before (None: none arrived), the
    last step computed before it, the step it resumed at, and the optimizer steps done twice."""
    attempts = re.split(rf"^.* INFO run {re.escape(rid)} on .*$", log, flags=re.M)[1:]
    out, last = [], 0
    for before, attempt in zip(attempts, attempts[1:]):
        steps = [int(k) for k in re.findall(r"step (\d+) computed", before)]
        last = max([last, *steps])
        sig = re.search(r"interrupted by (\w+) after step", before)
        resumed = re.search(rf"resumed {re.escape(rid)} at step (\d+)", attempt)
        at = int(resumed.group(1)) if resumed else 0
        out.append({"signal": sig.group(1) if sig else None, "computed": last, "resumed": at, "redone": last - at})
    return out


@pytest.fixture
def say(request):
    """Write one line to the terminal (past pytest's capture): the figures each fault ends with."""
    capture = request.config.pluginmanager.getplugin("capturemanager")

    def _say(line: str) -> None:
        with capture.global_and_fixture_disabled():
            print(line, flush=True)

    return _say


def check(sweep: Sweep, ref: Reference, wall: float, label: str, say) -> dict[str, list[dict]]:
    """Every record finished and equal to the reference; the interruptions of each run, printed as one line."""
    reference = ref.records()
    keep = ("step", "select", "report", "total_rank", "nonzero_params", "lr", "loss", "ranks_by_matrix", "xi")
    found = {p.parent.name: read_record(p) for p in sweep.results.glob("records/*/record.json")}
    assert sorted(found) == sorted(reference)
    for rid, rec in found.items():
        ref = reference[rid]
        assert rec["status"] == "finished"
        assert [{k: e.get(k) for k in keep} for e in rec["evals"]] == [{k: e.get(k) for k in keep}
                                                                       for e in ref["evals"]], rid
        assert (rec["best"], rec["ranks"], rec["params"]) == (ref["best"], ref["ranks"], ref["params"]), rid
    jobs = {rec["runtime"]["slurm_job"] for rec in found.values()}
    array = next(iter(jobs)).split("_")[0]
    assert jobs == {f"{array}_{i}" for i in range(6)}  # each run ended in its own array task, requeued, not resubmitted
    if shutil.which("sacct") and not subprocess.run(["sacct", "-n"], capture_output=True).returncode:
        for _ in range(60):  # the client is done at the last result file; the tasks end (and reach sacct) just after
            states = _sh("sacct", "-n", "-X", "-j", array, "-o", "State").split()
            if states == ["COMPLETED"] * 6:
                break
            time.sleep(1)
        assert states == ["COMPLETED"] * 6, states  # every task's last attempt (earlier ones: sacct -D)
    events = {rid: interruptions((sweep.results / "records" / rid / "log.txt").read_text(), rid) for rid in found}
    for rid, evs in events.items():
        computed = len(re.findall(r"step \d+ computed", (sweep.results / "records" / rid / "log.txt").read_text()))
        assert computed - STEPS == sum(e["redone"] for e in evs), rid  # every step done twice is seen above
    summary = {rid.rsplit("-", 1)[0]: [f"{e['signal'] or 'no signal'}@{e['computed']}->{e['resumed']}" for e in evs]
               for rid, evs in events.items() if evs}
    redone = sum(e["redone"] for evs in events.values() for e in evs)
    say(f"\n[slurm-faults] {label}: 6/6 records finished, equal to the reference; {wall:.0f} s; "
        f"{sum(map(len, events.values()))} interruptions, {redone} steps redone: {summary}")
    return events


def assert_signalled(events: list[dict]) -> None:
    assert events and all(e["signal"] and e["redone"] <= 1 for e in events), events


def test_usr2_sigterm_and_requeue_of_running_array_tasks(cluster, reference, tmp_path, say):
    sweep = Sweep(tmp_path / "res", "hydra.launcher.timeout_min=10", "hydra.launcher.max_num_timeout=3")
    sweep.wait_all_at(25)
    usr2, term, requeue = (sweep.rid("cola", m) for m in ("sora", "lora", "adalora"))
    _sh("scancel", "--signal=USR2", sweep.job(usr2))
    _sh("scancel", "--signal=TERM", sweep.job(term))
    _sh("scontrol", "requeue", sweep.job(requeue))
    events = check(sweep, reference, sweep.finish(), "USR2 / SIGTERM / scontrol requeue", say)
    assert [e["signal"] for e in events[usr2]] == ["SIGUSR2"] and [e["signal"] for e in events[term]] == ["SIGTERM"]
    assert [e["signal"] for e in events[requeue]] == ["SIGTERM"]  # Slurm's kill sequence on requeue: TERM first
    for rid in (usr2, term, requeue):
        assert_signalled(events[rid])
    assert not any(events[rid] for rid in events if rid not in (usr2, term, requeue))


def test_preemption_by_a_higher_priority_partition(cluster, reference, tmp_path, say):
    """PreemptMode=REQUEUE, GraceTime=30: SIGTERM while the job still runs; the run checkpoints and requeues."""
    sweep = Sweep(tmp_path / "res", "hydra.launcher.timeout_min=10", "hydra.launcher.max_num_timeout=3")
    sweep.wait_all_at(25)
    _sh("sbatch", "-p", "urgent", "-c", "8", "-J", NAME, "-o", "/dev/null", "--wrap", "sleep 5")
    events = check(sweep, reference, sweep.finish(), "preemption (partition priority)", say)
    for evs in events.values():
        assert_signalled(evs)
        assert {e["signal"] for e in evs} == {"SIGTERM"}


@pytest.mark.skipif(CI_ONLY, reason="SORA_SLURM_FAULTS=ci: the CI subset")
def test_node_set_down_mid_run_then_resumed(cluster, reference, tmp_path, say, node_failure_hold):
    sweep = Sweep(tmp_path / "res", "hydra.launcher.timeout_min=10", "hydra.launcher.max_num_timeout=3")
    sweep.wait_all_at(25)
    _sh("scontrol", "update", f"nodename={cluster}", "state=down", "reason=fault-suite")
    _wait_node_free_of(NAME)
    _sh("scontrol", "update", f"nodename={cluster}", "state=resume", check=False)  # ReturnToService may beat us
    events = check(sweep, reference, sweep.finish(), "node DOWN, then resumed", say)
    for evs in events.values():
        # slurmd still lives and sends the step SIGTERM, but srun's node-failure exit may SIGKILL a run before it
        # ends its step (seen here): the bound is then the checkpoint interval
        assert evs and all(e["redone"] <= (1 if e["signal"] else SAVE_STEPS) for e in evs), evs


@pytest.mark.skipif(CI_ONLY, reason="SORA_SLURM_FAULTS=ci: the CI subset")
def test_power_cut_loses_at_most_the_checkpoint_interval(cluster, reference, tmp_path, say, node_failure_hold):
    """No signal at all: slurmd, the job steps and the runs are kill -9'd at once, then the node is marked DOWN."""
    sweep = Sweep(tmp_path / "res", "hydra.launcher.timeout_min=10", "hydra.launcher.max_num_timeout=3")
    sweep.wait_all_at(25)
    _power_cut(cluster)
    events = check(sweep, reference, sweep.finish(), "power cut (kill -9, node DOWN)", say)
    for evs in events.values():
        assert evs and all(e["signal"] is None and e["redone"] <= SAVE_STEPS for e in evs), evs


@pytest.mark.skipif(CI_ONLY, reason="SORA_SLURM_FAULTS=ci: the CI subset")
def test_time_limit_usr2_before_the_kill_requeues_and_resumes(cluster, reference, tmp_path, say):
    """--time=2, signal_delay_s=30: slurmctld sends USR2 on its 30 s tick once <= 60 s are left (60-90 s into the
    job); start-up takes ~20 s here, so 1 s steps (80 s of training) outlast the first allocation in every run."""
    sweep = Sweep(tmp_path / "res", "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=30",
                  "hydra.launcher.max_num_timeout=4", "hydra.callbacks.slow_steps.seconds=1.0")
    events = check(sweep, reference, sweep.finish(timeout=900), "--time=2 (USR2 before the limit)", say)
    assert all(events.values()), "every run outlasts its first allocation"
    for evs in events.values():
        # a USR2 during start-up (before the first step) is submitit's own immediate requeue: nothing to redo
        assert all(e["redone"] <= 1 and e["signal"] in ("SIGUSR2", None) for e in evs), evs
        assert any(e["signal"] == "SIGUSR2" for e in evs), evs


def _wait_node_free_of(name: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not _sh("squeue", "-h", "-t", "R", "-n", name, "-o", "%i").strip():
            return
        time.sleep(0.5)
    raise AssertionError("the sweep's jobs still run on a DOWN node")


def _power_cut(node: str) -> None:
    """Freeze, then kill -9, slurmd and every process of the sweep's jobs with their slurmstepd (by pid: the job
    pids from `scontrol listpids` and their parents), step daemons first: a step daemon left alive a moment reports
    its job's end (FAILED, not requeued) before the node is marked DOWN (seen here). Then DOWN; slurmd back."""
    jobs = set(_sh("squeue", "-h", "-t", "R", "-n", NAME, "-o", "%A").split())
    rows = [line.split() for line in _sh("scontrol", "listpids", check=False).splitlines()[1:]]
    pids = {int(r[0]) for r in rows if len(r) > 1 and r[1] in jobs}
    steps = {p for p in map(_ppid, pids) if p and Path(f"/proc/{p}/comm").read_text().strip() == "slurmstepd"}
    order = [*map(str, steps), Path("/var/spool/slurm/slurmd.pid").read_text().strip(), *map(str, pids)]
    subprocess.run(["kill", "-STOP", *order], capture_output=True)
    subprocess.run(["kill", "-KILL", *order], capture_output=True)
    _sh("scontrol", "update", f"nodename={node}", "state=down", "reason=power-cut")
    _wait_node_free_of(NAME)
    _sh("slurmd")
    _sh("scontrol", "update", f"nodename={node}", "state=resume", check=False)


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
