"""The accuracy-vs-parameters frontier: Pareto points against a hand-made example, and built from records."""

import pytest

from sora.results import load_records
from sora.results.frontier import dominated_by, frontier_frame, pareto_mask, write_frontier
from tests.conftest import FIXTURES


def test_pareto_points_by_hand():
    # (params, score): E is the smallest; A beats C (fewer params, higher score); F beats B (same params, higher)
    # and D (fewer params, same score)
    points = {"A": (100, 80), "B": (200, 85), "C": (150, 79), "D": (300, 85), "E": (50, 60), "F": (200, 90)}
    mask = pareto_mask([p for p, _ in points.values()], [s for _, s in points.values()])
    assert dict(zip(points, mask)) == {"A": True, "B": False, "C": False, "D": False, "E": True, "F": True}
    assert pareto_mask([10, 20], [float("nan"), 50]) == [False, True]  # a diverged point is never optimal
    # who beats each dominated point most cheaply: C by A; B by F (same size, higher); D by B and F (both 200
    # params), F named for its higher score; optimal points and a diverged one name nobody
    by = dominated_by([p for p, _ in points.values()], [s for _, s in points.values()], list(points))
    assert dict(zip(points, by)) == {"A": "", "B": "F", "C": "A", "D": "F", "E": "", "F": ""}
    assert dominated_by([10, 20], [float("nan"), 50], ["x", "y"]) == ["", ""]


def test_frontier_from_fixture_records(tmp_path):
    records = load_records(FIXTURES / "results")
    frame = frontier_frame(records, "mrpc").set_index("method")
    # SoRA: 88, 89, 90 with fewer retained params than LoRA r=8 (87.5 at 8 x 165,888): LoRA is dominated
    assert frame.loc["sora", "score"] == pytest.approx(89.0) and frame.loc["sora", "n"] == 3
    assert frame.loc["sora", "failed"] == 1  # seed 81's failed run is marked, not averaged
    assert frame.loc["lora", "params"] == 8 * 165_888
    assert frame.loc["sora", "params"] < frame.loc["lora", "params"]
    assert bool(frame.loc["sora", "pareto"]) and not bool(frame.loc["lora", "pareto"])
    paths = write_frontier(records, "mrpc", tmp_path / "tables", tmp_path / "plots")
    assert [p.name for p in paths] == ["frontier_mrpc.csv", "frontier_mrpc.md", "frontier_mrpc.png",
                                       "frontier_mrpc.pdf"]
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    row = next(line for line in paths[1].read_text().splitlines() if line.startswith("| SoRA"))
    assert "| 89.00 ± 1.00 |" in row and "| yes |" in row  # mean ± std of seeds 0/21/42, Pareto-optimal
    lora = next(line for line in paths[1].read_text().splitlines() if line.startswith("| LoRA"))
    assert f"| {frame.loc['sora', 'label']} |" in lora  # LoRA r=8 is beaten by the smaller SoRA point, named
    assert "accuracy (mean ± std)" in paths[1].read_text()  # MRPC's reported metric, named


def test_a_diverged_seed_is_marked_not_averaged(tmp_path):
    import shutil

    from sora.records import write_record
    from tests.fixtures import make_results_fixture as fx

    results = tmp_path / "results"
    shutil.copytree(FIXTURES / "results", results)
    rec = fx.record("mrpc", "lora", 63, 0.6838)  # exactly the majority-class accuracy of MRPC dev
    rec["run_id"] = "mrpc-lora-diverged-s63"
    write_record(results / "records" / rec["run_id"] / "record.json", rec)
    frame = frontier_frame(load_records(results), "mrpc").set_index("method")
    assert frame.loc["lora", "diverged"] == "63" and frame.loc["lora", "n"] == 3
    assert frame.loc["lora", "score"] == pytest.approx(87.5)  # the fixture's three seeds only


@pytest.mark.parametrize("task", ["mrpc", "sst2", "qnli", "mnli", "mnli_mm"])
def test_constant_scores_are_the_real_dev_majority_share(task):
    """Task.constant_score against the real GLUE dev labels (../shared/glue; skipped where absent)."""
    import pandas as pd

    from sora.data.tasks import get_task
    from tests.conftest import SHARED

    t = get_task(task)
    split = t.dev_splits[0]
    path = SHARED / "glue" / t.source / f"{split}.tsv.gz"
    if not path.exists():
        pytest.skip(f"{path} not here (the full GLUE dev files ship only with this workplace's ../shared)")
    labels = pd.read_csv(path, sep="\t", quoting=3)["label"]
    assert t.constant_score == pytest.approx(100 * labels.value_counts().max() / len(labels), abs=0.005)


def test_a_point_that_kept_no_rank_is_drawn_and_counted(tmp_path):
    """SoRA at a large threshold can prune every rank (head only): 0 retained parameters, no place on a log axis,
    but still a point of the frontier (the fewest parameters)."""
    import shutil

    from sora.records import write_record
    from tests.fixtures import make_results_fixture as fx

    results = tmp_path / "results"
    shutil.copytree(FIXTURES / "results", results)
    for seed in (0, 21, 42):
        rec = fx.record("mrpc", "sora", seed, 0.75)
        rec["run_id"] = f"mrpc-sora-allpruned-s{seed}"
        rec["config"]["method"]["xi"] = 0.5
        rec["params"].update(retained=0, total_rank=0)
        write_record(results / "records" / rec["run_id"] / "record.json", rec)
    records = load_records(results)
    frame = frontier_frame(records, "mrpc")
    zero = frame[frame["params"] == 0]
    assert len(zero) == 1 and zero["score"].iloc[0] == pytest.approx(75.0) and bool(zero["pareto"].iloc[0])
    paths = write_frontier(records, "mrpc", tmp_path / "tables", tmp_path / "plots")
    assert paths[2].stat().st_size > 0


def test_frontier_recipe_is_per_task_and_keeps_committed_run_ids():
    """CoLA trains longer than MRPC / STS-B (results/minilm_frontier/PILOT.md); the per-task choice is resolved
    into the run's config, so the MRPC and STS-B records committed before it keep their run ids (a changed id
    would re-train them and split their table rows)."""
    from sora.config import load_config
    from sora.records import run_id

    cfg = {t: load_config(["experiment=frontier_minilm", "method=lora", "seed=0", f"task={t}"])
           for t in ("mrpc", "stsb", "cola")}
    assert (cfg["mrpc"].train.epochs, cfg["stsb"].train.epochs, cfg["cola"].train.epochs) == (3, 3, 6)
    # the committed LoRA r=8 seed-0 records (results/minilm_frontier/records), made before the per-task recipe
    assert run_id(cfg["mrpc"]) == "mrpc-lora-minilm-s0-af4058c768"
    assert run_id(cfg["stsb"]) == "stsb-lora-minilm-s0-9fe99644be"


def test_a_task_where_every_run_diverged_gets_its_table_and_no_plot(tmp_path):
    """`make smoke` then `make tables`: tiny models sit at the constant score, so every point is diverged (no mean):
    the table names them, and the plot, which would have nothing to place on its log axis, is not drawn."""
    from sora.records import write_record
    from tests.fixtures import make_results_fixture as fx

    results = tmp_path / "results"
    for method in ("lora", "sora"):
        for seed in (0, 21):
            rec = fx.record("mrpc", method, seed, 0.6838)  # the majority-class accuracy of MRPC dev
            write_record(results / "records" / rec["run_id"] / "record.json", rec)
    records = load_records(results)
    paths = write_frontier(records, "mrpc", tmp_path / "tables", tmp_path / "plots")
    assert [p.suffix for p in paths] == [".csv", ".md"] and not (tmp_path / "plots").exists()
    assert "0 21" in paths[1].read_text()  # the diverged seeds, named
