#!/usr/bin/env python3
"""Chat with a Megatron checkpoint, or answer a JSONL file (see megatron_chimed/generation/chat.py).

torchrun --nproc_per_node=2 tools/chat.py --checkpoint CKPT [--input q.jsonl --output a.jsonl]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from megatron_chimed.generation.chat import main

if __name__ == "__main__":
    sys.exit(main())
