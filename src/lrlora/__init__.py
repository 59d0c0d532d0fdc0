"""lrlora: LoRA adapters whose rank is learned per layer during training (LR-LoRA)."""

from .config import LRLoRAConfig
from .controller import (
    ControllerNotSteppedError,
    RankController,
    ReplicaMismatchError,
    allowance,
    temperature,
)
from .export import export_peft, load, merge, resume, save
from .inject import disable_adapters, inject, lora_layers, optimizer_groups
from .layer import LRLoRALinear
from .report import format_report, rank_report
from .util import BadFileError

__version__ = "0.1.0"

__all__ = [
    "BadFileError",
    "ControllerNotSteppedError",
    "LRLoRAConfig",
    "LRLoRALinear",
    "RankController",
    "ReplicaMismatchError",
    "allowance",
    "disable_adapters",
    "export_peft",
    "format_report",
    "inject",
    "load",
    "lora_layers",
    "merge",
    "optimizer_groups",
    "rank_report",
    "resume",
    "save",
    "temperature",
]
