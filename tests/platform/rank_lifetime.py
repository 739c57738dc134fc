"""A rank that initialises like the trainer (platform.initialize), reports its pid and waits.

tests/platform/test_distributed.py SIGKILLs the torchrun agent above it: the rank must die too.
"""

import os
import sys
import time
from pathlib import Path

from megatron_chimed.atomic import atomic_write_text
from megatron_chimed.platform import initialize

if __name__ == "__main__":
    initialize()
    atomic_write_text(Path(sys.argv[1]) / f"rank{os.environ['RANK']}.pid", str(os.getpid()))
    time.sleep(600)  # the test ends it, one way or another
