"""The reference numbers the eval protocols are checked against (tests/eval/fixtures/), and
the model they were measured on: shared by tools/eval_reference.py, which measures them with
lm-evaluation-harness, nltk and rouge, and by the tests, which rebuild the model and compare.

The model is `make_tiny_ziya(dtype="float32")` with its defaults: its tokenizer is trained
single-threaded and its weights drawn from a seeded generator, so every machine rebuilds the
same files; `model_digest` says whether it did (the tests check it before comparing numbers).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "eval" / "fixtures"
LM_EVAL_FIXTURE = FIXTURES / "lm_eval"
PAPER_METRICS_FIXTURE = FIXTURES / "paper_metrics"
# lm-eval task (or group) name -> (our format, its subjects, the scored split), as tasks/ says
LM_EVAL_TASKS = {
    "fixture-ceval-valid": ("ceval", ["basic_medicine", "clinical_medicine"], "val"),
    "fixture-cmmlu_anatomy": ("cmmlu", ["anatomy"], "test"),
}


def build_model(out_dir: Path) -> Path:
    """The tiny Ziya in fp32 (lm-eval and our adapters then agree to float rounding)."""
    from megatron_chimed.testing.tiny_ziya import make_tiny_ziya

    return make_tiny_ziya(out_dir, dtype="float32")


def model_digest(folder: Path) -> dict[str, str]:
    """sha256 of the tokenizer file and of every tensor (name, dtype, shape, bytes), in name
    order: independent of how torch happened to lay out the .bin files."""
    import torch

    from megatron_chimed.testing.tiny_ziya import read_hf_tensors

    weights = hashlib.sha256()
    for name, tensor in sorted(read_hf_tensors(folder).items()):
        weights.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        weights.update(tensor.contiguous().view(-1).view(dtype=torch.uint8).numpy().tobytes())
    tokenizer = hashlib.sha256((folder / "tokenizer.model").read_bytes())
    return {"tokenizer.model": tokenizer.hexdigest(), "weights": weights.hexdigest()}


def read_reference(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))
