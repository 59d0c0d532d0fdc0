"""One training run: a task, a model and a method (LR-LoRA or a peft baseline) at one budget.

``train(TrainArgs(...))`` loads the task (:mod:`lrlora.app.tasks`), attaches the method
(:mod:`lrlora.app.methods`), fine-tunes through the transformers ``Trainer``
(:mod:`lrlora.app.trainer`), evaluates, and publishes one run directory (see
:mod:`lrlora.app.runs`). Every method gets the same budget, ``budget_rank`` = the adapter
parameter count of LoRA at that rank on the same target modules; a task head (GLUE) is
trained by every method and counted separately.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments

from ..util import BadFileError, staging_dir, versions
from . import checkpoint, runs
from .args import METHODS, TrainArgs, make_task
from .baselines import lora_budget_params
from .methods import Method, attach
from .models import TargetError, count_params, default_targets
from .precision import resolve_precision
from .runs import RunExistsError
from .tasks.base import Loaded, ModelLoadError, Task
from .trainer import NonFiniteLossError, RankTrajectory, RunTrainer

__all__ = ["METHODS", "USER_ERRORS", "TrainArgs", "train"]


class ResumeError(ValueError):
    """The checkpoint to resume from was written with other settings."""


class LaunchError(RuntimeError):
    """``lrlora train`` was launched in a way it does not support."""


USER_ERRORS = (
    BadFileError,
    RunExistsError,
    NonFiniteLossError,
    ModelLoadError,
    TargetError,
    ResumeError,
    LaunchError,
)
"""Errors caused by input or settings; the CLI prints them without a traceback."""


# -- the run ------------------------------------------------------------------------------------
@dataclass
class Setup:
    """Everything prepared before training starts."""

    task: Task
    data: Loaded
    method: Method
    targets: list[str]
    heads: list[str]
    head_params: int
    budget_params: int
    total_steps: int


def planned_steps(args: TrainArgs, n_train: int) -> int:
    """Optimizer steps: ``max_steps``, or ``epochs`` passes over ``n_train`` rows, each step
    taking one batch on each of the processes torchrun / accelerate launch started."""
    if args.max_steps is not None:
        return args.max_steps
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    batches = math.ceil(math.ceil(n_train / args.batch_size) / processes)
    return max(1, math.ceil(args.epochs * batches))


def prepare(args: TrainArgs) -> Setup:
    """Load data and model, find targets and head, size the budget, attach the method."""
    task = make_task(args)
    data = task.load(args.task_options())
    model = data.model
    targets = list(args.target_modules or default_targets(model))
    heads = task.heads(model)
    total_steps = planned_steps(args, len(data.train_set))
    try:
        budget = lora_budget_params(model, targets, args.budget_rank)  # before any wrapping
    except ValueError as err:  # a target matched nothing (listing the model's layers), or
        # the budget rank is more than a layer can hold (the message names the flag)
        text = str(err)
        raise TargetError(text if text.startswith("--") else f"--target-modules: {text}") from err
    head_params = count_params(model, heads)
    return Setup(
        task=task,
        data=data,
        method=attach(model, args, targets, heads, total_steps),
        targets=targets,
        heads=heads,
        head_params=head_params,
        budget_params=budget,
        total_steps=total_steps,
    )


def training_precision(args: TrainArgs) -> str:
    """'fp32' or 'bf16': ``args.precision`` resolved for the device training runs on."""
    return resolve_precision(args.precision, "cuda" if torch.cuda.is_available() else "cpu")


def make_trainer(args: TrainArgs, setup: Setup) -> Any:
    """A :class:`~lrlora.app.trainer.RunTrainer` with the method's optimizer and callbacks, a
    :class:`~lrlora.app.trainer.RankTrajectory` (``trainer.rank_trajectory``) and, with
    ``checkpoint_every``, checkpoints in ``args.checkpoint_dir`` (the Trainer's output_dir;
    it writes nothing else there). Launched by torchrun or accelerate launch, the Trainer
    wraps the model in DDP (gloo on CPU, NCCL on GPUs)."""
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
        bf16=training_precision(args) == "bf16",  # autocast of the forward only
        dataloader_num_workers=0,
    )
    trajectory = RankTrajectory(setup.method, args.log_ranks_every)
    task, data = setup.task, setup.data
    scores_during = task.evaluates_during_training
    return RunTrainer(
        model=setup.method.model,
        args=training_args,
        train_dataset=data.train_set,
        eval_dataset=data.eval_set if scores_during else None,
        data_collator=task.collator(data.tokenizer),
        compute_metrics=task.compute_metrics if scores_during else None,
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
    scores = setup.task.evaluate(trainer, setup.data)
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
    others = checkpoint.foreign(args.checkpoint_dir)
    if others:
        names = ", ".join(p.name for p in others[:5]) + (" ..." if len(others) > 5 else "")
        raise RunExistsError(
            f"{args.checkpoint_dir} holds files lrlora did not write ({names}); it is where "
            "this run keeps its checkpoints: move them away or choose another --output-dir."
        )
    found = checkpoint.latest(args.checkpoint_dir)
    if found is not None and not args.resume and not args.overwrite:
        raise RunExistsError(
            f"{found} is a checkpoint of an interrupted run: pass --resume to continue it or "
            "--overwrite to start again."
        )


def resume_point(args: TrainArgs, world_size: int) -> Path | None:
    """With ``resume``: the latest checkpoint (None: there is none, start afresh). Refuses
    one written with other settings or another number of processes."""
    found = checkpoint.latest(args.checkpoint_dir) if args.resume else None
    if found is None:
        return None
    saved, ours = checkpoint.read_run(found), args.to_dict()
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
    if (finished and not args.keep_checkpoints) or checkpoint.latest(args.checkpoint_dir) is None:
        checkpoint.clear(args.checkpoint_dir)


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
        "eval_split": setup.data.eval_split,
        "eval_rows": len(setup.data.eval_set),
        "train_rows": len(setup.data.train_set),
        "main_metric": setup.task.main_metric,
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
    resolved = {
        "model_path": runs.portable_path(setup.data.model_path),
        "output_dir": runs.portable_path(str(args.run_dir)),
        "target_modules": setup.targets,
        "head_modules": setup.heads,
        "max_length": setup.data.max_length,
        "total_steps": setup.total_steps,
        "precision": training_precision(args),
    }
    command = [Path(sys.argv[0]).name, *sys.argv[1:]]
    return {
        "args": args.to_dict(),
        "resolved": resolved,
        "versions": versions(),
        "command": command,
    }


def publish_run(
    args: TrainArgs, setup: Setup, result: dict[str, Any], metrics: dict[str, Any]
) -> None:
    """Write the run directory beside its final place, rename it into place and print the
    summary."""
    final = args.run_dir
    staging = staging_dir(final)
    try:
        setup.method.export(staging / "adapter", setup.data.model_path)
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
            "launch without --use_fsdp); FSDP2 works through the library (docs/SCALING.md)."
        )
    main = trainer.is_world_process_zero()
    if main and not args.resume:  # what check_checkpoints let through is stale
        checkpoint.clear(args.checkpoint_dir)
    finished = False
    try:
        resume_from = resume_point(args, trainer.args.world_size)
        if resume_from is not None:
            checkpoint.verify(resume_from, trainer.args.world_size, setup.total_steps)
        if main and resume_from is not None:
            print(f"resuming from {resume_from}")
        result = fit_and_evaluate(args, setup, trainer, resume_from)
        metrics = build_metrics(args, setup, result)
        metrics["wall_time_s"] = time.perf_counter() - began
        if main:
            publish_run(args, setup, result, metrics)
        finished = True
    finally:
        if not finished:
            trainer.close_progress_bars()
        if main:
            tidy_checkpoints(args, finished)
    trainer.accelerator.wait_for_everyone()  # the run directory exists when train() returns
    return metrics
