"""`chimed pipeline experiment=demo run_dir=DIR`: convert the base model, then CPT, SFT, the
reward model, rejection sampling, export to HF and evaluate, each step reading the previous
step's output. A step that finished left `DIR/steps/<step>.json`, so a rerun (after a crash or
a preemption) skips it and continues; training steps themselves resume from their `latest`.
At the end `DIR/summary.md` and `DIR/loss_curves.png` describe the whole run.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from megatron_chimed.atomic import atomic_write_text
from megatron_chimed.pipeline.steps import STEPS, Context, marker, read_marker
from megatron_chimed.pipeline.summary import write_summary

log = logging.getLogger("megatron_chimed.pipeline")


def main(argv: list[str]) -> int:
    from megatron_chimed import config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = config.load(argv)  # every key checked now, not an hour in
    run_dir = Path(cfg.run_dir).resolve()
    overrides = [a for a in argv if not a.startswith("run_dir=")]
    ctx = Context(run_dir, cfg.pipeline, overrides)
    run_dir.mkdir(parents=True, exist_ok=True)
    steps = cfg.pipeline.steps
    for number, step in enumerate(steps, start=1):
        if read_marker(run_dir, step) is not None:
            log.info("[%d/%d] %s: done before, skipped", number, len(steps), step)
            continue
        log.info("[%d/%d] %s", number, len(steps), step)
        start = time.time()
        info = STEPS[step](ctx)
        path = marker(run_dir, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"seconds": time.time() - start, **info}, indent=2))
    summary = write_summary(run_dir, steps)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
