"""A record written under older identity rules is still the same run: tables do not split it from today's runs,
and a sweep does not train it again (that would count its seed twice)."""

import copy

from sora.config import load_config
from sora.records import finished_equivalent, identity, write_record
from sora.results import load_records
from tests.fixtures import make_results_fixture as fx

FINGERPRINT = "f" * 16


def _older(ident: dict) -> dict:
    """The identity as a version before the neutral defaults were left out wrote it."""
    old = copy.deepcopy(ident)
    old["train"].update(attention="eager", compile=False)
    return old


def test_a_finished_twin_under_an_older_id_is_found_and_others_are_not(tmp_path):
    cfg = load_config(["task=mrpc", "method=sora", "seed=3", f"results_dir={tmp_path}"])
    ident = identity(cfg, FINGERPRINT)
    assert "attention" not in ident["train"]  # today's rule: a neutral default is not part of the identity
    rec = fx.record("mrpc", "sora", 3, 0.8)
    rec.update(run_id=f"mrpc-sora-{cfg.model.name}-s3-0lderrules", identity=_older(ident))
    path = tmp_path / "records" / rec["run_id"] / "record.json"
    write_record(path, rec)
    assert finished_equivalent(tmp_path, cfg, FINGERPRINT) == path
    other = load_config(["task=mrpc", "method=sora", "seed=3", "method.xi=0.5", f"results_dir={tmp_path}"])
    assert finished_equivalent(tmp_path, other, FINGERPRINT) is None  # another config
    assert finished_equivalent(tmp_path, cfg, "0" * 16) is None  # other data
    rec["status"] = "failed"
    write_record(path, rec)
    assert finished_equivalent(tmp_path, cfg, FINGERPRINT) is None  # a failed run is re-run, not skipped


def test_tables_read_an_older_identity_as_todays(tmp_path):
    cfg = load_config(["task=mrpc", "method=sora", "seed=0"])
    ident = identity(cfg, FINGERPRINT)
    for seed, value, ident_seed in ((0, 0.80, _older(ident)), (1, 0.82, ident)):
        rec = fx.record("mrpc", "sora", seed, value)
        rec.update(run_id=f"mrpc-sora-deberta_v3_base-s{seed}-x", identity={**ident_seed, "seed": seed})
        write_record(tmp_path / "records" / rec["run_id"] / "record.json", rec)
    records = load_records(tmp_path)
    assert records.frame["label"].nunique() == 1  # one configuration, two seeds
