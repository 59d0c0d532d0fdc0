"""A GLUE task as ``lrlora train`` runs it: a sequence classifier (a new head on the model)
trained on the task's training split and scored on dev, or on a validation slice carved out
of the training split (``val_fraction``). transformers is imported where used.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..models import head_modules, minilm_path
from .base import Loaded, ModelLoadError, TaskOptions, check_model_dir
from .glue import Example, GlueTask, load_split
from .metrics import compute_metrics

if TYPE_CHECKING:
    from collections.abc import Callable


class ClassificationTask:
    """A GLUE task (:class:`~lrlora.app.tasks.glue.GlueTask`) behind the
    :class:`~lrlora.app.tasks.base.Task` interface."""

    peft_task_type = "SEQ_CLS"
    evaluates_during_training = True
    default_batch_size = 32
    default_max_steps = 400

    def __init__(self, glue: GlueTask) -> None:
        self.glue = glue
        self.name = glue.name
        self.main_metric = glue.main_metric

    def load(self, options: TaskOptions) -> Loaded:
        train_rows, eval_rows, split = self.load_examples(options)
        path = options.model or minilm_path()
        model, tokenizer = self.load_model(path, options.seed)
        if self.glue.is_regression:
            start_at_mean_label(model, [float(e.label) for e in train_rows])
        max_length = options.max_length or self.glue.max_length
        return Loaded(
            model=model,
            tokenizer=tokenizer,
            model_path=path,
            train_set=tokenize(train_rows, tokenizer, max_length),
            eval_set=tokenize(eval_rows, tokenizer, max_length),
            eval_split=split,
            max_length=max_length,
        )

    def load_examples(self, options: TaskOptions) -> tuple[list[Example], list[Example], str]:
        """(train, eval, eval split name). The training rows are shuffled with the seed; a
        ``val_fraction`` slice of them becomes the evaluation set ("val") instead of dev."""
        train = load_split(self.name, "train", options.data_dir)
        random.Random(options.seed).shuffle(train)
        if options.val_fraction > 0:
            n_val = max(1, round(options.val_fraction * len(train)))
            evaluation, train, split = train[:n_val], train[n_val:], "val"
        else:
            evaluation, split = load_split(self.name, "dev", options.data_dir), "dev"
        return train[: options.train_limit], evaluation[: options.eval_limit], split

    def load_model(self, path: str, seed: int) -> tuple[nn.Module, Any]:
        """A sequence classifier with the task's labels (1 = regression), its head drawn with
        ``seed``, and its tokenizer."""
        import transformers
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        check_model_dir(path)
        problem = "regression" if self.glue.is_regression else "single_label_classification"
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # the head is new by design; no warning
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            transformers.set_seed(seed)
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=self.glue.num_labels, problem_type=problem
            )
        except (OSError, ValueError) as err:  # transformers raises both for a bad directory
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

    def heads(self, model: nn.Module) -> list[str]:
        return head_modules(model)

    def collator(self, tokenizer: Any) -> Callable:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def predictions(self, logits: Any) -> Any:
        """Class ids (argmax) for classification, the single output for regression."""
        logits = logits[0] if isinstance(logits, tuple) else logits
        return logits.reshape(-1) if self.glue.is_regression else logits.argmax(-1)

    def compute_metrics(self, prediction: Any) -> dict[str, float]:
        preds = self.predictions(prediction.predictions)
        return compute_metrics(self.name, preds, prediction.label_ids)

    def evaluate(self, trainer: Any, loaded: Loaded) -> dict[str, float]:
        return self.compute_metrics(trainer.predict(loaded.eval_set))


def tokenize(examples: list[Example], tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    """Token ids per example (unpadded; the collator pads each batch) plus ``labels``."""
    texts = [e.text_a for e in examples]
    pairs = [e.text_b for e in examples] if examples and examples[0].text_b is not None else None
    encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    keys = list(encoded.keys())
    return [{**{k: encoded[k][i] for k in keys}, "labels": e.label} for i, e in enumerate(examples)]


def start_at_mean_label(model: nn.Module, labels: list[float]) -> None:
    """Set a regression head's output bias to the mean training label.

    From a zero bias a short run spends its first hundreds of steps learning the label
    offset (STS-B's labels are 0 to 5, mean 2.7) instead of similarity: 200 LoRA steps of
    batch 8 ended with a dev Pearson near 0 and a training loss above the labels' variance.
    Every method gets the same head, so this changes no comparison.
    """
    for name in head_modules(model):
        linears = [m for m in model.get_submodule(name).modules() if isinstance(m, nn.Linear)]
        if linears and linears[-1].out_features == 1 and linears[-1].bias is not None:
            with torch.no_grad():
                linears[-1].bias.fill_(sum(labels) / len(labels))
