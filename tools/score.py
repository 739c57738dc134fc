#!/usr/bin/env python3
"""Score a JSONL of prompt/response with a reward-model checkpoint (see reward/score.py).

torchrun --nproc_per_node=2 tools/score.py --checkpoint RM_CKPT --input in.jsonl --output out.jsonl
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from megatron_chimed import run_log

run_log.quiet_console()  # before megatron-core's import raises its warnings

from megatron_chimed.launch.rank_main import report_errors  # noqa: E402
from megatron_chimed.reward.score import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(report_errors("score", main))
