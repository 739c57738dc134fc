"""Run a command in the test process and leave logging as it was (run_log.py changes it).

`run_log.quiet_console` installs a console handler on the root logger, routes warnings into
logging and sets levels, for the life of a command's process. A test that runs a command in
process wraps it in `kept_logging()`, so the tests after it see pytest's logging unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

from megatron_chimed import run_log

LOGGERS = ("", "megatron_chimed", "torch.utils.cpp_extension")


@contextlib.contextmanager
def kept_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers = root.handlers[:]
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    state = (run_log._State.console, run_log._State.buffer, dict(run_log._State.files))
    showwarning = warnings.showwarning
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        run_log._State.console, run_log._State.buffer, run_log._State.files = state
        logging.captureWarnings(False)
        warnings.showwarning = showwarning
