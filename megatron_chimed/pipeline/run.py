"""`chimed pipeline experiment=demo run_dir=DIR`: convert the base model, then CPT, SFT, the
reward model, rejection sampling, export to HF and evaluate, each step reading the previous
step's output. A step that finished left `DIR/steps/<step>.json`, so a rerun (after a crash or
a preemption) skips it and continues; training steps themselves resume from their `latest`.
At the end `DIR/summary.md` and `DIR/loss_curves.png` describe the whole run; `DIR/pipeline.log`
keeps the pipeline's own lines, `DIR/logs/<step>.log` each step's output.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from megatron_chimed.atomic import atomic_write_text
from megatron_chimed.pipeline.steps import STEPS, Context, StepFailed, marker, read_marker
from megatron_chimed.pipeline.summary import write_summary

log = logging.getLogger("megatron_chimed.pipeline")


def main(argv: list[str]) -> int:
    from megatron_chimed import config, run_log

    cfg = config.load(argv)  # every key checked now, not an hour in
    run_dir = Path(cfg.run_dir).resolve()
    with run_log.command_log(run_dir / "pipeline.log", export=False):  # steps log on their own
        return _run(cfg, run_dir, [a for a in argv if not a.startswith("run_dir=")])


def _run(cfg, run_dir: Path, overrides: list[str]) -> int:
    from megatron_chimed import run_log

    ctx = Context(run_dir, cfg.pipeline, overrides)
    steps = cfg.pipeline.steps
    for number, step in enumerate(steps, start=1):
        if read_marker(run_dir, step) is not None:
            log.info("[%d/%d] %s: done before, skipped", number, len(steps), step)
            continue
        log.info("[%d/%d] %s", number, len(steps), step)
        start = time.time()
        try:
            info = STEPS[step](ctx)
        except StepFailed as err:  # the step's own error line is above, and in its log
            log.error("[%d/%d] %s", number, len(steps), err)
            return 1
        path = marker(run_dir, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"seconds": time.time() - start, **info}, indent=2))
        log.info("[%d/%d] %s: done in %.0f s", number, len(steps), step, time.time() - start)
    run_log.echo(write_summary(run_dir, steps))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
