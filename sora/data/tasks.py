"""The nine GLUE tasks as facts: text columns, labels, metrics, and which metric selects and reports."""

from __future__ import annotations

from dataclasses import dataclass, field

from sora.errors import UserError


@dataclass(frozen=True)
class Task:
    name: str
    text_columns: tuple[str, ...]
    num_labels: int  # 1 = regression (STS-B)
    metrics: tuple[str, ...]
    main_metric: str  # the number the papers' Table 1 reports
    select_metric: str  # checkpoint selection as in the released SoRA code
    dev_splits: tuple[str, ...] = ("validation",)
    large: bool = False  # sora_split protocol: hold out 1,000 train rows to select instead of half the dev set
    label_names: tuple[str, ...] = field(default=())
    data_name: str = ""  # the GLUE config the rows come from ("" = name); mnli_mm reads mnli
    # main metric x100 of the best constant prediction on the GLUE dev set (majority class share; MCC and
    # Pearson of a constant are 0): a run at or near it learned nothing (diverged), see sora.results.tables
    constant_score: float = 0.0

    @property
    def source(self) -> str:
        return self.data_name or self.name

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task("cola", ("sentence",), 2, ("mcc", "accuracy"), "mcc", "mcc", label_names=("unacceptable", "acceptable")),
        Task("sst2", ("sentence",), 2, ("accuracy",), "accuracy", "accuracy", large=True, constant_score=50.92),
        Task("mrpc", ("sentence1", "sentence2"), 2, ("accuracy", "f1"), "accuracy", "f1", constant_score=68.38),
        Task("stsb", ("sentence1", "sentence2"), 1, ("pearson", "spearman"), "pearson", "pearson"),
        Task("qqp", ("question1", "question2"), 2, ("accuracy", "f1"), "accuracy", "accuracy", large=True,
             constant_score=63.18),
        Task("mnli", ("premise", "hypothesis"), 3, ("accuracy",), "accuracy", "accuracy",
             dev_splits=("validation_matched", "validation_mismatched"), constant_score=35.45),
        # the release's mnli-mm run (src/glue_tasks.py:82-86): select and report on the mismatched dev set
        Task("mnli_mm", ("premise", "hypothesis"), 3, ("accuracy",), "accuracy", "accuracy",
             dev_splits=("validation_mismatched",), data_name="mnli", constant_score=35.22),
        Task("qnli", ("question", "sentence"), 2, ("accuracy",), "accuracy", "accuracy", large=True,
             constant_score=50.54),
        Task("rte", ("sentence1", "sentence2"), 2, ("accuracy",), "accuracy", "accuracy", constant_score=52.71),
        Task("wnli", ("sentence1", "sentence2"), 2, ("accuracy",), "accuracy", "accuracy", constant_score=56.34),
    ]
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    return TASKS[name]
