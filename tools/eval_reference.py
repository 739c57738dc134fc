#!/usr/bin/env python3
"""Measure the reference numbers that tests/eval checks the eval protocols against, with the
reference tools themselves (run once by a developer; the results are committed):

    python tools/eval_reference.py --ref-python /tmp/lmeval-venv/bin/python

`--ref-python` is a Python with `lm-eval==0.4.13`, `transformers`, `sentencepiece`, `nltk` and
`rouge==1.0.1` (tests/eval/fixtures/README.md says how that venv was made). Writes:

- tests/eval/fixtures/lm_eval/reference.json: lm-eval run on the tiny fp32 Ziya with the
  fixture's task files (lm-eval's ceval-valid / cmmlu templates over local CSVs, 5 shots,
  `--log_samples`): every context, continuation and log-likelihood, and its tables.
- tests/eval/fixtures/paper_metrics/reference.json: nltk's corpus_bleu and rouge's
  get_scores(avg=True) on the fixture pairs, split as the authors' script splits them.

Runs offline: the model is built here and lm-eval reads the CSVs, nothing from a hub.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from megatron_chimed.eval.paper_metrics import BLEU_WEIGHTS, char_split
from megatron_chimed.testing.eval_reference import (
    LM_EVAL_FIXTURE,
    LM_EVAL_TASKS,
    PAPER_METRICS_FIXTURE,
    REPO,
    build_model,
    model_digest,
)

VERSIONS = "lm_eval transformers torch tokenizers sentencepiece datasets nltk rouge".split()
# Runs under --ref-python: the packages' own functions on the prepared strings.
METRICS_SNIPPET = """
import json, sys, warnings
from nltk.translate.bleu_score import corpus_bleu
from rouge import Rouge
data = json.load(sys.stdin)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # nltk warns about zero n-gram counts
    bleu = corpus_bleu([[r] for r in data["refs"]], data["hyps"], weights=data["weights"])
rouge = Rouge().get_scores(data["hyps"], data["refs"], avg=True)
print(json.dumps({"bleu": bleu, "rouge": rouge}))
"""


def ref_versions(python: str) -> dict[str, str]:
    code = (
        "import json, importlib.metadata as m; "
        f"print(json.dumps({{n: m.version(n) for n in {VERSIONS!r}}}))"
    )
    return json.loads(subprocess.check_output([python, "-c", code], text=True))


def run_lm_eval(python: str, model: Path, out: Path) -> list[str]:
    command = [
        python, "-m", "lm_eval",
        "--model", "hf",
        "--model_args", f"pretrained={model},dtype=float32",
        "--tasks", ",".join(LM_EVAL_TASKS),
        "--include_path", str((LM_EVAL_FIXTURE / "tasks").relative_to(REPO)),
        "--num_fewshot", "5",
        "--batch_size", "1",
        "--device", "cpu",
        "--log_samples",
        "--output_path", str(out),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    subprocess.run(command, cwd=REPO, env=env, check=True)  # data_files are repo-relative
    return command


def lm_eval_reference(python: str, work: Path) -> dict:
    model = build_model(work / "tiny_ziya_fp32")
    out = work / "lm_eval_out"
    command = run_lm_eval(python, model, out)
    [results_file] = out.rglob("results_*.json")
    results = json.loads(results_file.read_text(encoding="utf-8"))
    docs: dict[str, list[dict]] = {}
    for samples in sorted(out.rglob("samples_*.jsonl")):
        task = samples.name.removeprefix("samples_").rsplit("_", 1)[0]
        rows = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines()]
        docs[task] = [
            {
                "doc_id": row["doc_id"],
                "context": row["arguments"]["gen_args_0"]["arg_0"],
                "continuations": [a["arg_1"] for a in row["arguments"].values()],
                "loglikelihoods": [float(r[0][0]) for r in row["resps"]],
                "target": int(row["target"]),
                "acc": row["acc"],
                "acc_norm": row["acc_norm"],
            }
            for row in sorted(rows, key=lambda r: r["doc_id"])
        ]
    tables = {
        name: {k: v for k, v in metrics.items() if k.startswith(("acc", "alias"))}
        for name, metrics in results["results"].items()
    }
    command[command.index("--model_args") + 1] = "pretrained=TINY_ZIYA_FP32,dtype=float32"
    command[command.index("--output_path") + 1] = "OUT"
    command[0] = "python"
    return {
        "made_by": "python tools/eval_reference.py --ref-python PYTHON",
        "lm_eval_command": " ".join(command),
        "versions": ref_versions(python),
        "model": {
            "built_by": "megatron_chimed.testing.eval_reference.build_model",
            **model_digest(model),
        },
        "results": tables,
        "samples": docs,
    }


def paper_metrics_reference(python: str) -> dict:
    lines = (PAPER_METRICS_FIXTURE / "pairs.jsonl").read_text(encoding="utf-8").splitlines()
    pairs = [json.loads(line) for line in lines if line.strip()]
    # The script passes the split *strings* to both: nltk then counts characters.
    hyps = [char_split(p["output"]) for p in pairs]
    refs = [char_split(p["reference"]) for p in pairs]
    payload = {"hyps": hyps, "refs": refs, "weights": list(BLEU_WEIGHTS.values())}
    measured = json.loads(
        subprocess.check_output(
            [python, "-c", METRICS_SNIPPET], input=json.dumps(payload), text=True
        )
    )
    return {
        "made_by": "python tools/eval_reference.py --ref-python PYTHON",
        "versions": {k: v for k, v in ref_versions(python).items() if k in ("nltk", "rouge")},
        "split_outputs": hyps,
        "split_references": refs,
        "bleu": dict(zip(BLEU_WEIGHTS, measured["bleu"])),
        "bleu_weights": {k: list(v) for k, v in BLEU_WEIGHTS.items()},
        "rouge_f": {name: scores["f"] for name, scores in measured["rouge"].items()},
    }


def write(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ref-python", required=True, help="a Python with lm-eval, nltk and rouge")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        write(LM_EVAL_FIXTURE / "reference.json", lm_eval_reference(args.ref_python, Path(work)))
    write(PAPER_METRICS_FIXTURE / "reference.json", paper_metrics_reference(args.ref_python))
    return 0


if __name__ == "__main__":
    sys.exit(main())
