"""Benchmark suites: which tasks, methods, seeds and learning rates, and at what size.

A :class:`Suite` holds two :class:`Matrix` es: ``full`` (the real benchmark) and ``quick``
(a few minutes, exercises the whole path). Add a suite by adding an entry to
:data:`SUITES`; nothing else in ``lrlora.bench`` names a task.

GLUE sizing (MiniLM-L6, 2 CPU cores). The matrix runs as two processes with one thread
each (``OMP_NUM_THREADS=1``, disjoint ``--tasks``), which gets more from 2 cores than one
process with two threads. Measured that way on SST-2 (batch 16, padded to about 36
tokens, 576 tokens a step), a step costs about 1.0 s averaged over the four methods
(LR-LoRA 0.7, LoRA 1.0, AdaLoRA 1.1, DoRA 1.6), i.e. about 1.75 ms per token. A batch of
16 pads to about 36 tokens on SST-2, 76 on MRPC, 127 on RTE (13% of its pairs are cut at
128) and 61 on STS-B, so MRPC, RTE and STS-B train at batch 8 (608, 1,016 and 488 tokens a
step: 1.05, 1.8 and 0.85 s). ``eval_s`` is one evaluation of dev or the validation slice,
and every run also pays about ``OVERHEAD_S`` = 10 s (model load, tokenisation, export)::

    task steps tune batch step_s final run (s)        tuning run (s)      12 final + 12 tuning
    sst2  400  200  16    1.0    10+400*1.0+30  = 440  10+200*1.0+30  = 240 12*(440 + 240) = 8160
    mrpc  200  100   8    1.05   10+200*1.05+25 = 245  10+100*1.05+25 = 140 12*(245 + 140) = 4620
    rte   150   75   8    1.8    10+150*1.8+30  = 310  10+75*1.8+30   = 175 12*(310 + 175) = 5820
    stsb  200  100   8    0.85   10+200*0.85+60 = 240  10+100*0.85+60 = 155 12*(240 + 155) = 4740
                                                     total 23340 s of one process = 6.5 h

(12 final runs = 4 methods x 3 seeds; 12 tuning runs = 4 methods x 3 learning rates, seed
0.) As two processes that is about 3.2 h. The learning rate is tuned on the validation
slice at half the final number of steps (same schedule shape: linear warm-up over 6%,
then linear decay), which can favour a larger rate than the full run would; the bias is
the same for every method. :func:`TaskSizing.run_seconds` applies this arithmetic to any
plan (``lrlora bench --dry-run`` prints the time left). SST-2 trains on 6,400 of its 67k
rows (one pass at 400 x 16); every method sees the same rows for a given seed. A run sees
1,600 of MRPC's 3,668 training pairs, 1,200 of RTE's 2,490 and 1,600 of STS-B's 5,749.

What this sizing can show (measured 2026-11-28): SST-2 and STS-B learn (dev 83-85 and
78-81 for every method but one DoRA seed). MRPC and RTE do not, for any method: 10 of
the 12 MRPC tuning runs scored 74.81 on the validation slice, the majority class's
accuracy-F1 mean (the other two 74.71 and 75.35), and the dev scores stay within 2
points of it; RTE stays at chance (47-54). The design's prototype reached MRPC 81-82
with 400 steps of batch 32, 8x the examples of a run here; giving MRPC and RTE that
much is the first thing to change when more time is available.

GLUE-long sizing (``glue-long``; provisional until the premise check has run). The glue
sizing is too short for rank to matter, so this suite trains the small tasks for whole
epochs at a low budget, as the AdaLoRA paper did (RTE 50 epochs, MRPC 30, STS-B 25 at an
average rank of 2): here SST-2 1 epoch and MRPC, RTE and STS-B 10 (:data:`GLUE_LONG_EPOCHS`,
the one place to change them), batch 32, sequences up to 128 tokens (SST-2 64), every
method of a task at the same steps. A step of batch 32 is one optimizer step; an epoch is
``ceil(rows / 32)`` steps, as ``lrlora train --epochs`` counts it. A step costs what its
tokens cost: about 1.75 ms per token in each of two single-threaded processes (the glue
sizing above), times 32 examples padded as the glue suite measured them
(:data:`GLUE_PADDED_TOKENS`), so ``step_s`` is 2.0 s on SST-2, 4.3 on MRPC, 7.1 on RTE and
3.4 on STS-B. Measured: the first RTE tuning run (LoRA rank 1, 2026-12-02) took 5.9 to 6.5 s
a step on one thread beside another process; the first version of this table assumed 1.54 s
for every task, SST-2's speed, and so put the suite at a quarter of its cost. Tuning runs are
half as long and hold out the glue suite's validation slices::

    task  rows    epochs steps tune  final run (s)           tuning run (s)       3 + 3 runs
    sst2  67,349   1     2,105 1,052 10+2105*2.02+30 = 4284  10+1052*2.02+30 = 2161  5.4 h
    mrpc   3,668  10     1,150   575 10+1150*4.26+25 = 4929  10+575*4.26+25  = 2482  6.2 h
    rte    2,490  10       780   390 10+780*7.11+30  = 5587  10+390*7.11+30  = 2814  7.0 h
    stsb   5,749  10     1,800   900 10+1800*3.42+60 = 6219  10+900*3.42+60  = 3144  7.8 h
                                  one method at one budget rank, the 4 tasks: 26.4 h

(3 tuning runs = the 3 rates of the grid, seed 0; 3 final runs = seeds 0, 1, 2.) The suite
is 9 (method, budget) cells, run in this order (:data:`GLUE_LONG_STAGES`): the premise,
LoRA at budget ranks 1 and 8 (2 cells, 53 h of one process, 26 h as two); every method at
budget rank 2 (4 cells, 105 h; 53 h as two); AdaLoRA, LR-LoRA and the hand allocation at
budget rank 1 (3 cells, 79 h; 40 h as two): about 237 h of one process in all, 119 h as two.
That is weeks of this machine: the suite is meant for a GPU (one prepared script, the model
as a file of the working tree, as ``scripts/gpu-sweep.sh`` did for the glue sizing), with
CPU runs adding to the same result files.
Whether to go on after the premise is what the premise check decides
(:mod:`lrlora.bench.long_md`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..app.tasks.commonsense import COMMONSENSE_TASKS

OVERHEAD_S = 10.0
"""Seconds per run outside training and evaluation (model load, tokenisation, export)."""


def base_method(name: str) -> str:
    """The method a name stands for: ``lr-lora`` for the variant ``lr-lora+rank_lr=0.1``
    (see :mod:`lrlora.bench.variants`), the name itself for a method."""
    return name.split("+", 1)[0]


def is_variant(name: str) -> bool:
    return base_method(name) != name


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
    """Estimated seconds per training step of one single-threaded process while another runs
    beside it on the 2 cores (mean over the methods)."""
    eval_s: float = 5.0
    """Estimated seconds of one evaluation."""

    def identity(self) -> dict:
        """What a run's result depends on (the time estimates left out): a finished result
        recorded with other values is stale and runs again."""
        found = dataclasses.asdict(self)
        del found["step_s"], found["eval_s"]
        return found

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
    budgets: tuple[int, ...] = ()
    """Budget ranks the report sets side by side (its own among them): a table of each
    method's scores per budget, and a score-vs-parameters curve per method. Each budget's
    runs are its own matrix (``lrlora bench --budget-rank R``), read from the same results."""

    def __post_init__(self) -> None:
        for method in self.methods:
            base = base_method(method)
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
class Stage:
    """Runs a suite makes in turn: ``methods`` at ``budget_rank``."""

    title: str
    budget_rank: int
    methods: tuple[str, ...]
    premise: bool = False
    """Part of the premise check, run first (``lrlora bench --premise``)."""


@dataclass(frozen=True)
class Suite:
    name: str
    full: Matrix
    quick: Matrix
    description: str = ""
    stages: tuple[Stage, ...] = ()
    """A suite that runs several budget ranks, each with its own methods: the order they
    run in (each run belongs to one stage). Empty: one budget rank, every method."""

    @property
    def budget_ranks(self) -> tuple[int, ...]:
        """The budget ranks of the stages, in ascending order."""
        return tuple(sorted({stage.budget_rank for stage in self.stages}))

    def chosen_stages(self, budget_rank: int | None, premise: bool) -> list[Stage]:
        """The stages at ``budget_rank`` (None: at every one), only the premise's if
        ``premise``."""
        return [s for s in self.stages if (s.premise or not premise)
                and budget_rank in (None, s.budget_rank)]  # fmt: skip

    def methods_at(self, budget_rank: int) -> tuple[str, ...]:
        """The methods the stages run at ``budget_rank``, in the matrix's order."""
        found = {m for stage in self.stages if stage.budget_rank == budget_rank
                 for m in stage.methods}  # fmt: skip
        return tuple(m for m in self.full.methods if m in found)


_METHODS = ("lora", "adalora", "dora", "lr-lora")
_GRID = (1e-3, 2e-3, 4e-3)
"""Learning rates tried per method. First (5e-4, 1e-3, 2e-3): every method's best on SST-2
was the top, 2e-3 (LoRA 85.4, DoRA 84.5, LR-LoRA 85.4 on the validation slice) and AdaLoRA
stayed at the majority class below it, so the grid moved up one step."""

GLUE_SIZING = {
    s.task: s
    for s in (
        TaskSizing("sst2", 400, 200, 16, 64, 0.01, train_limit=6400, step_s=1.0, eval_s=30),
        TaskSizing("mrpc", 200, 100, 8, 128, 0.10, step_s=1.05, eval_s=25),
        TaskSizing("rte", 150, 75, 8, 128, 0.10, step_s=1.8, eval_s=30),
        TaskSizing("stsb", 200, 100, 8, 128, 0.10, step_s=0.85, eval_s=60),
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

GLUE_TRAIN_ROWS = {"sst2": 67_349, "mrpc": 3_668, "rte": 2_490, "stsb": 5_749}
"""Rows of each GLUE training split as the data directory holds them."""
GLUE_LONG_EPOCHS = {"sst2": 1, "mrpc": 10, "rte": 10, "stsb": 10}
"""Passes over the training split per final run of the glue-long suite (provisional)."""
GLUE_LONG_BATCH = 32
GLUE_PADDED_TOKENS = {"sst2": 36, "mrpc": 76, "rte": 127, "stsb": 61}
"""Tokens per example after padding a batch to its longest (measured at batch 16)."""
SECONDS_PER_TOKEN = 1.75e-3
"""Training time per token of one single-threaded process beside another (MiniLM)."""


def epoch_steps(rows: int, epochs: float, batch_size: int) -> int:
    """Optimizer steps of ``epochs`` passes over ``rows`` at ``batch_size``, counted as
    ``lrlora train --epochs`` counts them (the last batch of a pass may be short)."""
    return max(1, math.ceil(epochs * math.ceil(rows / batch_size)))


def _long_sizing(task: str) -> TaskSizing:
    """A glue-long task: its epochs at batch 32, the glue suite's sequence length,
    validation slice and evaluation time; tuning runs half as long."""
    glue = GLUE_SIZING[task]
    steps = epoch_steps(GLUE_TRAIN_ROWS[task], GLUE_LONG_EPOCHS[task], GLUE_LONG_BATCH)
    step_s = GLUE_LONG_BATCH * GLUE_PADDED_TOKENS[task] * SECONDS_PER_TOKEN
    return TaskSizing(task, steps, steps // 2, GLUE_LONG_BATCH, glue.max_length,
                      glue.val_fraction, step_s=step_s, eval_s=glue.eval_s)  # fmt: skip


GLUE_LONG_SIZING = {task: _long_sizing(task) for task in GLUE_LONG_EPOCHS}
GLUE_LONG_METHODS = ("lora", "adalora", "lr-lora", "hand")
GLUE_LONG_GRID = (5e-4, 1e-3, 2e-3)
"""Learning rates tried per method, task and budget on the validation slice: the glue grid
one step lower, since these runs take 5 to 9 times the glue suite's steps at 2 to 4 times its
batch, and at the glue sizing the top of its grid (4e-3) already stopped some LoRA and DoRA
runs learning (benchmarks/results/lr_choice.json)."""
GLUE_LONG_STAGES = (
    Stage("premise: LoRA at budget rank 1", 1, ("lora",), premise=True),
    Stage("premise: LoRA at budget rank 8", 8, ("lora",), premise=True),
    Stage("every method at budget rank 2", 2, GLUE_LONG_METHODS),
    Stage("the others at budget rank 1", 1, ("adalora", "lr-lora", "hand")),
)
"""The order the suite runs in: first whether rank pays at all (LoRA 8 against LoRA 1), then
the comparison at budget rank 2, then at 1. Rank 8 is LoRA's alone."""
GLUE_LONG_QUICK_SIZING = {"sst2": GLUE_QUICK_SIZING["sst2"]}

ATTENTION_ONLY_LORA = "lora+target_modules=query,key,value,attention.output.dense+budget_rank=9"
"""LoRA with the whole budget in attention: rank 9 on query, key, value and attention output
costs 6 x 4 x 768 x 9 = 165,888 parameters on MiniLM, exactly rank 4 on every layer. If it
scores like LoRA everywhere, moving rank between attention and the MLP cannot help either."""

ABLATION_VARIANTS = (
    "lr-lora+rank_update=optimizer",
    "lr-lora+rebalance_every=50",
    "lr-lora+scaling=budget",
    "lr-lora+rank_lr=0.3",
    "lr-lora+rank_lr=0.1",
    "lr-lora+tau_start=0.25",
    "lr-lora+rebalance_every=50+rebalance_exact=true",
    "lr-lora+fill_budget=false",
    "lr-lora+init_rank=8",
    "lr-lora+r_max=16",
    "lr-lora+rank_update=prune",
    "lr-lora+rank_update=prune+prune_stages=2+harden_at=0.5",
    ATTENTION_ONLY_LORA,
)
"""LR-LoRA with one setting changed each (see :mod:`lrlora.bench.variants`), in the order
worth running. First the former defaults: re-balancing every 50 steps (the default until a
many-seed GPU sweep found it lowering SST-2 and STS-B; docs/ABLATIONS-gpu.md) and the scaling
alpha / budget rank (LoRA's at the budget; on SST-2 alpha / r_max beat it on every seed,
docs/METHOD.md). Then the rank learning rate: at the default 0.02 the SST-2 runs moved rho
by less than one rank from the budget rank in 400 steps (3.4 to 4.8), so the learned
allocation was nearly LoRA's uniform one. Results of variants made under a former default
are kept in ``results/stale/``. Then pruning by measured value (``rank_update='prune'``:
LoRA at the ceiling for 40% of the run, then the components worth most to the loss per
parameter kept up to the budget, trained on at a faster scaling), the rank update that
finds the planted ranks, and its two-stage form with both cuts later, the closest to the
planted ranks so far. Last, a fixed allocation of LoRA's
(:data:`ATTENTION_ONLY_LORA`), to measure what reallocating the budget can gain at all."""


COMMONSENSE_VARIANTS = (
    "lr-lora+rank_update=optimizer",
    "lr-lora+rank_update=optimizer+rank_lr=0.3",
    "lr-lora+rank_update=optimizer+rebalance_every=50",
    "lr-lora+rank_lr=0.3",
)
"""At the default rank learning rate rho moves by about 0.15 in the suite's 48 steps, so
every layer keeps the budget rank; at 0.3 the ranks can move by several units. The first
three keep rho in AdamW (the former rank update; the third also re-balances every 50 steps,
the default before that), the last is the faster rank under the shared update."""


def _commonsense_matrix(label: str, sizing: dict[str, TaskSizing]) -> Matrix:
    """The four methods at one fixed rate, one seed, scored per test set, with zero-shot."""
    methods = (*_METHODS, *COMMONSENSE_VARIANTS)
    return Matrix(label, sizing, methods, (0,), _COMMONSENSE_LR,
                  report_name="RESULTS-commonsense", tune_lr=False,
                  subscores=COMMONSENSE_TASKS, zero_shot=True)  # fmt: skip


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
            budgets=(2, 4, 8),
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
    "glue-long": Suite(
        "glue-long",
        full=Matrix(
            "glue-long",
            GLUE_LONG_SIZING,
            GLUE_LONG_METHODS,
            (0, 1, 2),
            dict.fromkeys(GLUE_LONG_METHODS, GLUE_LONG_GRID),
            budget_rank=2,
            report_name="RESULTS-long",
        ),
        quick=Matrix(
            "glue-long-quick",
            GLUE_LONG_QUICK_SIZING,
            GLUE_LONG_METHODS,
            (0,),
            dict.fromkeys(GLUE_LONG_METHODS, (1e-3,)),
            budget_rank=2,
            report_name="RESULTS-long",
        ),
        description="GLUE with MiniLM-L6 trained for epochs at budget ranks 1 and 2, where "
        "rank can pay; the premise (LoRA at rank 8 above rank 1) first",
        stages=GLUE_LONG_STAGES,
    ),
    "commonsense": Suite(
        "commonsense",
        full=_commonsense_matrix("commonsense", COMMONSENSE_SIZING),
        quick=_commonsense_matrix("commonsense-quick", COMMONSENSE_QUICK_SIZING),
        description="Commonsense reasoning with SmolLM2-135M-Instruct (a 30-layer Llama)",
    ),
}
"""Suite name -> suite. ``lrlora bench --suite NAME`` runs ``full`` (or ``quick``)."""


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose one of {sorted(SUITES)}")
    return SUITES[name]
