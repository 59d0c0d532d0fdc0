"""The speed benchmark's outputs: :func:`run_speed_bench` measures (:mod:`lrlora.bench.speed`),
writes ``speed-<device>.json`` and renders ``PERFORMANCE.md`` from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..util import (
    BadFileError,
    check_shape,
    excerpt,
    read_json,
    write_json_atomic,
    write_text_atomic,
)
from .speed import (
    FAST_PATH_VARIANTS,
    INFER_VARIANTS,
    REBALANCED,
    TRAIN_VARIANTS,
    SpeedArgs,
    evaluate_targets,
    measure,
)

MIB = 2**20


def _rows(names: tuple[str, ...], refs: tuple[str, ...]) -> dict[str, dict[str, type]]:
    keys = ("median_ms", "mad_ms", *(f"{ref}{mad}" for ref in refs for mad in ("", "_mad")))
    return {name: dict.fromkeys(keys, float) for name in names}


_TRAIN_ROWS = _rows((*TRAIN_VARIANTS, REBALANCED), ("vs_lora", "vs_base", "vs_adalora"))
_INFER_ROWS = _rows(INFER_VARIANTS, ("vs_lora", "vs_base"))
RECORD_SHAPE = {
    **dict.fromkeys(("command", "timestamp", "model"), str),
    "args": dict.fromkeys(("batch_size", "seq_len", "rank", "rounds", "steps", "warmup"), int),
    "machine": {**dict.fromkeys(("device_name", "device", "platform"), str),
                **dict.fromkeys(("cpu_count", "threads"), int)},
    "versions": dict.fromkeys(("torch", "transformers", "peft", "python"), (str, None)),
    "train": {
        "summary": _TRAIN_ROWS, "cpu_summary": _TRAIN_ROWS, "memory_measure": str,
        "memory": {name: dict.fromkeys(("activations", "gradients", "state", "vs_lora"), float)
                   for name in TRAIN_VARIANTS},
        "rebalance_ms": float, "rebalance_every": int,
    },
    "inference": {"summary": _INFER_ROWS, "cpu_summary": _INFER_ROWS,
                  "lr_lora_ranks": {str: int}, "merged_same_architecture": bool},
}  # fmt: skip
"""What ``speed-<device>.json`` holds that the report reads."""

_FAST_LABELS = tuple(f"{name} {p}" for p in ("fp32", "bf16") for name in FAST_PATH_VARIANTS)
FAST_PATH_SHAPE = {
    "tokens_per_s": dict.fromkeys(_FAST_LABELS, float),
    "first_loss": dict.fromkeys(_FAST_LABELS, float),
    "speedup": dict.fromkeys(FAST_PATH_VARIANTS, float),
    "speedup_mad": dict.fromkeys(FAST_PATH_VARIANTS, float),
    "native_bf16": bool,
}
"""The optional ``fast_path`` part of a record (``lrlora bench-speed --fast-path``)."""
FAST_PATH_TARGET = 1.8
"""The speed-up of the bf16 path over fp32 that would make it worth a default."""


def read_record(path: Path) -> dict[str, Any]:
    """A speed record written by :func:`run_speed_bench`, checked against
    :data:`RECORD_SHAPE`; :class:`~lrlora.util.BadFileError` naming the file otherwise."""
    todo = "measure again: run lrlora bench-speed without --report-only"
    record = read_json(path, todo)
    check_shape(path, record, RECORD_SHAPE, todo)
    key = record["train"]["memory_measure"]
    if key not in ("total", "cuda_peak"):
        problem = f"memory_measure is {excerpt(key, 40)}, not 'total' or 'cuda_peak'"
        raise BadFileError(path, problem, todo=todo)
    memory = record["train"]["memory"]
    for name in TRAIN_VARIANTS:
        check_shape(path, memory[name], {key: float}, todo)
    if memory["lora"][key] <= 0:
        raise BadFileError(path, f"LoRA's memory ({key}) is not positive", todo=todo)
    if "fast_path" in record:
        check_shape(path, record["fast_path"], FAST_PATH_SHAPE, todo)
    return record


LABELS = {
    "base": "frozen base (head only)",
    "lora": "LoRA, r = R",
    "lr-lora": "LR-LoRA, ceiling R (step only)",
    REBALANCED: "LR-LoRA, ceiling R (+ re-balance amortised)",
    "adalora": "AdaLoRA, init_r = R",
    "dora": "DoRA, r = R",
    "base model": "base model (no adapter)",
    "lr-lora merged": "LR-LoRA merged into the weights",
    "lr-lora (peft)": "LR-LoRA exported, unmerged PEFT LoRA",
}


def _ratio(row: dict[str, float], key: str) -> str:
    return f"{row[key]:.3f} ± {row[key + '_mad']:.3f}"


def _train_table(train: dict[str, Any]) -> list[str]:
    key = train["memory_measure"]
    lines = [
        "| variant | ms / step | vs LoRA | vs frozen base | vs LoRA, CPU time "
        "| memory (MiB) | memory vs LoRA |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in (*TRAIN_VARIANTS[:3], REBALANCED, *TRAIN_VARIANTS[3:]):
        row, cpu = train["summary"][name], train["cpu_summary"][name]
        mem = train["memory"]["lr-lora" if name == REBALANCED else name]
        lines.append(
            f"| {LABELS[name]} | {row['median_ms']:.1f} ± {row['mad_ms']:.1f} "
            f"| {_ratio(row, 'vs_lora')} | {_ratio(row, 'vs_base')} | {_ratio(cpu, 'vs_lora')} "
            f"| {mem[key] / MIB:.1f} | {mem['vs_lora']:.4f} |"
        )
    return lines


def _memory_parts(train: dict[str, Any]) -> list[str]:
    lines = ["| variant | saved for backward | gradients | params + optimizer + method state |",
             "|---|---:|---:|---:|"]  # fmt: skip
    for name in TRAIN_VARIANTS:
        m = train["memory"][name]
        lines.append(f"| {LABELS[name]} | {m['activations'] / MIB:.2f} "
                     f"| {m['gradients'] / MIB:.2f} | {m['state'] / MIB:.2f} |")  # fmt: skip
    return lines


def _infer_table(infer: dict[str, Any]) -> list[str]:
    lines = [
        "| variant | ms / forward | vs LoRA | vs base | vs LoRA, CPU time | vs base, CPU time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in INFER_VARIANTS:
        row, cpu = infer["summary"][name], infer["cpu_summary"][name]
        label = LABELS["base model" if name == "base" else name]
        lines.append(
            f"| {label} | {row['median_ms']:.1f} ± {row['mad_ms']:.1f} "
            f"| {_ratio(row, 'vs_lora')} | {_ratio(row, 'vs_base')} "
            f"| {_ratio(cpu, 'vs_lora')} | {_ratio(cpu, 'vs_base')} |"
        )
    return lines


def _setup(record: dict[str, Any]) -> list[str]:
    args, machine, versions = record["args"], record["machine"], record["versions"]
    return [
        "```",
        record["command"],
        "```",
        "",
        f"- Date: {record['timestamp']}",
        f"- Machine: {machine['device_name']}, {machine['cpu_count']} cores, "
        f"{machine['threads']} torch thread(s), device `{machine['device']}`; "
        f"{machine['platform']}",
        f"- Versions: torch {versions['torch']}, transformers {versions['transformers']}, "
        f"peft {versions['peft']}, Python {versions['python']}",
        f"- Model: {record['model']}; batch "
        f"{args['batch_size']} x {args['seq_len']} tokens; R = {args['rank']}; "
        f"{args['rounds']} rounds x {args['steps']} steps after {args['warmup']} warm-up steps",
    ]


METHOD = """\
Every variant is built once from the same model, targets (query, key, value,
attention.output.dense, intermediate.dense, output.dense) and batch. A training step is
forward, backward, AdamW step, the method's own update (LR-LoRA: `RankController.step`,
with the soft gate and the budget projection; AdaLoRA: `update_and_allocate`), `zero_grad`.
After the warm-up, each round times the steps of every variant in turn, the order rotated
by one each round. **The machine was shared with other jobs during the run**: absolute
times carry their load, and it is the interleaving that makes the ratios meaningful,
since a slow spell slows every variant of a round alike. Times are medians over rounds,
ratios medians of the per-round ratios, `±` the median absolute deviation. The targets are
judged on wall time (`time.perf_counter`); the "CPU time" columns give the same ratios in
the process's CPU time (`time.process_time`), which does not count the time spent waiting
for a core and so checks the wall-time ratios on a busy machine.

LR-LoRA can re-balance its components every `rebalance_every` steps (off by default since
the GPU sweep in docs/ABLATIONS-gpu.md); that cost is timed on its own and added, divided
by `rebalance_every` (50 when it is off), in the "+ re-balance" row, the one the target is
judged on, so the target holds with re-balancing on as well.

Memory is what one training step adds on top of the frozen weights: the bytes of the
distinct tensors saved for backward (counted with `torch.autograd.graph.saved_tensors_hooks`,
parameters and buffers excluded), the gradients, the trainable parameters, the AdamW state
and the method's own state (AdaLoRA's three importance tables). It is exact and
deterministic (no allocator or RSS noise), so its ratios carry no spread; it leaves out
short-lived buffers (e.g. DoRA's per-forward weight norm), which on CPU no allocator
statistic reports. The frozen base keeps almost nothing for backward (only the head's
input), so its row is near zero: its forward activations are transient, freed layer by
layer. On CUDA the allocator's peak over the step (`max_memory_allocated`) is
recorded too and the memory columns and target use it."""


def _target_line(target: dict[str, Any]) -> str:
    verdict = "**met**" if target["met"] else "**MISSED**"
    return f"- {verdict}: {target['target']}: {target['detail']}."


def _fast_path(fast: dict[str, Any] | None) -> list[str]:
    """The bf16-autocast section, when the record has one (else nothing)."""
    if fast is None:
        return []
    lines = [
        "## Fast path: bf16 autocast against fp32 (`--fast-path`)",
        "",
        "| method | fp32 tokens/s | bf16 tokens/s | bf16 speed-up | first-step loss fp32 / bf16 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in FAST_PATH_VARIANTS:
        fp32, bf16 = f"{name} fp32", f"{name} bf16"
        lines.append(
            f"| {LABELS[name]} | {fast['tokens_per_s'][fp32]:.0f} | "
            f"{fast['tokens_per_s'][bf16]:.0f} | {fast['speedup'][name]:.2f}x "
            f"(± {fast['speedup_mad'][name]:.2f}) | {fast['first_loss'][fp32]:.4f} / "
            f"{fast['first_loss'][bf16]:.4f} |"
        )
    worst = min(fast["speedup"].values())
    verdict = "met" if worst >= FAST_PATH_TARGET else "not met"
    native = "has" if fast["native_bf16"] else "does not have"
    choice = "bf16" if fast["native_bf16"] else "fp32"
    lines += [
        "",
        f"Target: the bf16 path at least {FAST_PATH_TARGET}x fp32's tokens per second for "
        f"both methods: {verdict} (the lower speed-up is {worst:.2f}x). This CPU {native} "
        f"native bf16 instructions (AVX-512 BF16 or AMX), so `lrlora train --precision auto` "
        f"trains in {choice} here.",
        "",
    ]
    return lines


def render(record: dict[str, Any]) -> str:
    train, infer = record["train"], record["inference"]
    ranks = sorted(set(infer["lr_lora_ranks"].values()))
    lines = [
        "# Performance: training-step time, memory and inference",
        "",
        "Generated by `lrlora bench-speed` (`src/lrlora/bench/speed.py`); do not edit by hand.",
        "",
        *_setup(record),
        "",
        "## Targets",
        "",
        *[_target_line(t) for t in record["targets"]],
        "",
        "## Training step",
        "",
        *_train_table(train),
        "",
        f"One LR-LoRA re-balance (all layers) takes {train['rebalance_ms']:.1f} ms, i.e. "
        f"{train['rebalance_ms'] / train['rebalance_every']:.2f} ms per step at "
        f"`rebalance_every = {train['rebalance_every']}`.",
        "",
        "Memory by part (MiB):",
        "",
        *_memory_parts(train),
        "",
        "## Inference (eval mode, no grad, same batch)",
        "",
        *_infer_table(infer),
        "",
        f"The exported LR-LoRA adapter was trained for the benchmark's steps with a budget of "
        f"R/2 and hardened; its per-layer ranks range over {ranks}.",
        "",
        *_fast_path(record.get("fast_path")),
        "## How it is measured",
        "",
        METHOD,
        "",
    ]
    return "\n".join(lines)


def run_speed_bench(args: SpeedArgs, template: nn.Module | None = None) -> dict[str, Any]:
    """Run the benchmark; write the JSON and PERFORMANCE.md; return the record.

    ``template``: the model to copy for every variant (default: ``args.model`` loaded as a
    two-label classifier). With ``args.report_only`` the record is read back instead.
    """
    results = Path(args.results_dir) / f"speed-{args.device}.json"
    record = read_record(results) if args.report_only else measure(args, template)
    record["targets"] = evaluate_targets(record["train"], record["inference"])
    write_json_atomic(results, record)
    write_report(record, Path(args.docs_dir) / "PERFORMANCE.md")
    return record


def write_report(record: dict[str, Any], path: Path) -> None:
    write_text_atomic(path, render(record))
