"""Evaluation of the paper's tasks (sections 3 and 4) on any model behind ``EvalModel``.

Multi-choice accuracy (C-Eval, CMMLU, MedQA), Chinese BLEU/ROUGE (ChiMed QA, MC dialogue),
NER entity F1 (CCKS-2019, ChiMST) and CAMI/MICA bias scores; ``run_eval`` runs one task or a
suite from the Hydra ``eval`` config group (conf/eval/); ``chimed eval`` (cli.py) runs it on a
Megatron checkpoint at any TP x DP, or on an HF export.
"""

from .model_api import EvalModel, HFEvalModel, TemplatedModel
from .runner import run_eval, shard

__all__ = ["EvalModel", "HFEvalModel", "TemplatedModel", "run_eval", "shard"]
