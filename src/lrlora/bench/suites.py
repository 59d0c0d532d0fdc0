"""Benchmark suites: which tasks, methods, seeds and learning rates, and at what size.

A :class:`Suite` holds two :class:`Matrix` es: ``full`` (the real benchmark) and ``quick``
(a few minutes, exercises the whole path). Add a suite by adding an entry to
:data:`SUITES`; nothing else in ``lrlora.bench`` names a task.

GLUE sizing (MiniLM-L6, 2 CPU cores, batch 16). A LoRA step costs about 0.5 s at 128
padded tokens on an idle machine; take it as 0.05 s + 0.45 s x (padded length / 128).
Measured with the MiniLM tokenizer, a batch of 16 pads to about 36 tokens on SST-2, 76 on
MRPC, 127 on RTE (13% of its pairs are cut at 128) and 61 on STS-B, so a LoRA step costs
about 0.18, 0.32, 0.50 and 0.27 s. ``step_s`` below is that times 1.35, the mean cost of
the four methods relative to LoRA (DoRA about 2x, AdaLoRA and LR-LoRA about 1.2-1.3x in
``--quick`` runs on a shared machine; pessimistic on purpose). ``eval_s`` is one
evaluation (dev or the validation slice) and every run also pays about ``OVERHEAD_S`` =
10 s (model load, tokenisation, adapter export, the run's figures)::

    task steps tune step_s final run (s)         tuning run (s)       12 final + 12 tuning
    sst2  400  200  0.25   10+400*0.25+4  = 114   10+200*0.25+4  = 64   12*(114 + 64)    = 2136
    mrpc  300  150  0.45   10+300*0.45+3  = 148   10+150*0.45+3  = 80.5 12*(148 + 80.5)  = 2742
    rte   250  125  0.67   10+250*0.67+3  = 180.5 10+125*0.67+3  = 96.8 12*(180.5 + 96.8) = 3327
    stsb  300  150  0.37   10+300*0.37+10 = 131   10+150*0.37+10 = 75.5 12*(131 + 75.5)  = 2478
                                                                total 10683 s = 2.97 h

(12 final runs = 4 methods x 3 seeds; 12 tuning runs = 4 methods x 3 learning rates, seed
0.) With the methods at LoRA's speed the same matrix takes about 2.3 h. The learning rate
is tuned on the validation slice at half the final number of steps (same schedule shape:
linear warm-up over 6%, then linear decay), which can favour a larger rate than the full
run would; the bias is the same for every method. :func:`TaskSizing.run_seconds` applies
this arithmetic to any plan (``lrlora bench --dry-run`` prints the time left). SST-2
trains on 6,400 of its 67k rows (one pass at 400 x 16); every method sees the same rows
for a given seed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..tasks.commonsense import COMMONSENSE_TASKS

OVERHEAD_S = 10.0
"""Seconds per run outside training and evaluation (model load, tokenisation, export)."""


@dataclass(frozen=True)
class TaskSizing:
    """How one task is run; every method and seed of the task shares it."""

    task: str
    steps: int
    """Optimizer steps of a final run."""
    tune_steps: int
    """Optimizer steps of a learning-rate tuning run."""
    batch_size: int
    max_length: int
    """Tokens per example (longer inputs are cut)."""
    val_fraction: float
    """Share of the training split held out as the validation slice for tuning."""
    train_limit: int | None = None
    """Train on this many (seeded-shuffled) training rows; None = all."""
    eval_limit: int | None = None
    """Evaluate on this many rows of dev or the validation slice; None = all."""
    step_s: float = 0.5
    """Estimated seconds per training step on 2 idle cores (mean over the methods)."""
    eval_s: float = 5.0
    """Estimated seconds of one evaluation."""

    def run_seconds(self, steps: int) -> float:
        """Estimated wall time of one run of ``steps`` steps."""
        return OVERHEAD_S + steps * self.step_s + self.eval_s


@dataclass(frozen=True)
class Matrix:
    """One benchmark matrix: what runs, at what size."""

    label: str
    """First part of every run id (e.g. ``glue``, ``glue-quick``)."""
    sizing: dict[str, TaskSizing]
    """Task -> sizing, in table order."""
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    """Seeds of the final runs."""
    lr_grid: dict[str, tuple[float, ...]]
    """Method -> learning rates tried in the tuning stage."""
    budget_rank: int = 4
    tune_seed: int = 0
    report_name: str = "RESULTS"
    """File stem of the generated report (``docs/RESULTS.md``)."""
    tune_lr: bool = True
    """Pick each method's rate on the validation slice; False: every grid holds the one rate
    the final runs use, and there is no tuning stage."""
    subscores: tuple[str, ...] = ()
    """Per-part scores a run reports beside its score (the commonsense test sets), tabled
    per method."""
    zero_shot: bool = False
    """Also score the model without any adapter, by the same evaluation (one result file)."""
    companions: tuple[str, ...] = ()
    """Suites whose (full) results this report summarises after its own, with a link to
    their full report."""

    def __post_init__(self) -> None:
        for method in self.methods:
            base = method.split("+")[0]
            if method not in self.lr_grid and base not in self.lr_grid:
                raise ValueError(
                    f"{self.label}: {method!r} needs a learning-rate grid, or (a variant) a "
                    f"grid for its base method {base!r}"
                )
            if not self.tune_lr and len(self.lr_grid.get(method, (0,))) != 1:
                raise ValueError(f"{self.label}: without tuning every method needs exactly one lr")

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.sizing)

    def select(
        self,
        tasks: list[str] | None = None,
        methods: list[str] | None = None,
        seeds: list[int] | None = None,
        budget_rank: int | None = None,
    ) -> Matrix:
        """A sub-matrix (tasks and methods must be this matrix's) at another budget rank."""
        for what, chosen, known in (("task", tasks, self.tasks), ("method", methods, self.methods)):
            unknown = sorted(set(chosen or ()) - set(known))
            if unknown:
                raise ValueError(
                    f"unknown {what}(s) {unknown} for {self.label}; choose from {known}"
                )
        rank = self.budget_rank if budget_rank is None else budget_rank
        if rank < 1:
            raise ValueError(f"budget_rank must be a positive integer, got {rank}.")
        name = self.report_name if rank == self.budget_rank else f"{self.report_name}-r{rank}"
        return dataclasses.replace(
            self,
            sizing={t: s for t, s in self.sizing.items() if t in (tasks or self.tasks)},
            methods=tuple(m for m in self.methods if m in (methods or self.methods)),
            seeds=tuple(seeds) if seeds else self.seeds,
            budget_rank=rank,
            report_name=name,
        )


@dataclass(frozen=True)
class Suite:
    name: str
    full: Matrix
    quick: Matrix
    description: str = ""


_METHODS = ("lora", "adalora", "dora", "lr-lora")
_GRID = (1e-3, 2e-3, 4e-3)
"""Learning rates tried per method. First (5e-4, 1e-3, 2e-3): every method's best on SST-2
was the top, 2e-3 (LoRA 85.4, DoRA 84.5, LR-LoRA 85.4 on the validation slice) and AdaLoRA
stayed at the majority class below it, so the grid moved up one step."""

GLUE_SIZING = {
    s.task: s
    for s in (
        TaskSizing("sst2", 400, 200, 16, 64, 0.01, train_limit=6400, step_s=0.25, eval_s=4),
        TaskSizing("mrpc", 300, 150, 16, 128, 0.10, step_s=0.45, eval_s=3),
        TaskSizing("rte", 250, 125, 16, 128, 0.10, step_s=0.67, eval_s=3),
        TaskSizing("stsb", 300, 150, 16, 128, 0.10, step_s=0.37, eval_s=10),
    )
}
COMMONSENSE_SIZING = {
    "commonsense": TaskSizing(
        "commonsense", 48, 0, 4, 256, 0.0, eval_limit=20, step_s=12, eval_s=250
    ),
}
"""SmolLM2-135M on 2 CPU cores: a batch of 4 questions (about 130 tokens each after padding)
costs 9-20 s per step with one thread, depending on the method and the load; scoring
costs about 1.5 s per question (20 of each of the 7 test sets = 140). So the suite is
small: 48 steps x 4 = 192 training questions, one seed, one rate. It shows the effect of
instruction tuning on the answer format and where the ranks go, not a converged model."""
COMMONSENSE_QUICK_SIZING = {
    "commonsense": TaskSizing(
        "commonsense", 4, 0, 2, 256, 0.0, train_limit=16, eval_limit=2, step_s=3, eval_s=20
    ),
}
_COMMONSENSE_LR = dict.fromkeys(_METHODS, (1e-3,))

GLUE_QUICK_SIZING = {
    s.task: s
    for s in (
        TaskSizing("sst2", 12, 6, 8, 64, 0.01, 200, 48, step_s=0.1, eval_s=1),
        TaskSizing("stsb", 12, 6, 8, 64, 0.05, 200, 48, step_s=0.15, eval_s=1),
    )
}

ABLATION_VARIANTS = (
    "lr-lora+rank_lr=0.1",
    "lr-lora+rank_lr=0.3",
    "lr-lora+rebalance_every=0",
    "lr-lora+fill_budget=false",
    "lr-lora+init_rank=8",
    "lr-lora+scaling=max",
    "lr-lora+r_max=16",
)
"""LR-LoRA with one setting changed each (see :mod:`lrlora.bench.variants`), in the order
worth running. First the rank learning rate: at the default 0.02 the SST-2 runs moved
rho by less than one rank from the budget rank in 400 steps (3.4 to 4.8), so the learned
allocation was nearly LoRA's uniform one."""

SUITES: dict[str, Suite] = {
    "glue": Suite(
        "glue",
        full=Matrix(
            "glue",
            GLUE_SIZING,
            _METHODS,
            (0, 1, 2),
            dict.fromkeys(_METHODS, _GRID),
            companions=("commonsense",),
        ),
        quick=Matrix(
            "glue-quick", GLUE_QUICK_SIZING, _METHODS, (0,), dict.fromkeys(_METHODS, (1e-3,))
        ),
        description="GLUE with MiniLM-L6 (all-MiniLM-L6-v2)",
    ),
    "ablations": Suite(
        "ablations",
        full=Matrix(
            "glue",
            GLUE_SIZING,
            ("lora", "lr-lora", *ABLATION_VARIANTS),
            (0, 1, 2),
            {"lora": _GRID, "lr-lora": _GRID},
            report_name="ABLATIONS",
        ),
        quick=Matrix(
            "glue-quick",
            GLUE_QUICK_SIZING,
            ("lora", "lr-lora", ABLATION_VARIANTS[0]),
            (0,),
            {"lora": (1e-3,), "lr-lora": (1e-3,)},
            report_name="ABLATIONS",
        ),
        description="LR-LoRA variants on the GLUE matrix's tasks, seeds and tuned rates; "
        "LoRA and default LR-LoRA are the glue suite's own runs (same ids, run once)",
    ),
    "commonsense": Suite(
        "commonsense",
        full=Matrix(
            "commonsense",
            COMMONSENSE_SIZING,
            _METHODS,
            (0,),
            _COMMONSENSE_LR,
            report_name="RESULTS-commonsense",
            tune_lr=False,
            subscores=COMMONSENSE_TASKS,
            zero_shot=True,
        ),
        quick=Matrix(
            "commonsense-quick",
            COMMONSENSE_QUICK_SIZING,
            _METHODS,
            (0,),
            _COMMONSENSE_LR,
            report_name="RESULTS-commonsense",
            tune_lr=False,
            subscores=COMMONSENSE_TASKS,
            zero_shot=True,
        ),
        description="Commonsense reasoning with SmolLM2-135M-Instruct (a 30-layer Llama)",
    ),
}
"""Suite name -> suite. ``lrlora bench --suite NAME`` runs ``full`` (or ``quick``)."""


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose one of {sorted(SUITES)}")
    return SUITES[name]
