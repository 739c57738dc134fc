"""`chimed gpu-check`: the acceptance check to run on the first GPU node of a new cluster.

Each section runs the project's own code (model builder, converter, weights loader, training
loop, SFT packing, reward model, generation) on the GPU at small sizes, then a 13B-shaped slice
for speed and memory, and prints one PASS / FAIL / SKIP line with its figure; the full figures
go to a JSON report. `--dry-run` runs the same code paths on the CPU at tiny sizes (what the
CPU test suite runs). Layout:

- `cli.py`: arguments, local wheels, the torchrun re-launch for `--tp 2`, the report;
- `context.py`: what the checks share (sizes, the tiny converted checkpoint, model building);
- `results.py`: `CheckResult`, the printed lines and the exit code;
- `checks.py`: environment, TE vs local spec, packed SFT, reward model, generation;
- `train_check.py`: 20 SFT steps with validation, save and resume;
- `slice_bench.py`: the 13B-shaped slice (time, TFLOP/s and memory per layer, A/B).
"""

from megatron_chimed.gpu_check.results import CheckResult

__all__ = ["CheckResult"]
