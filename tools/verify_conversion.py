#!/usr/bin/env python3
"""Check a conversion: the same tokens through HF `transformers` and the megatron checkpoint.

python tools/verify_conversion.py --hf DIR --megatron DIR --tp N [--tol 1e-4]

Started without torchrun, it starts itself under torchrun with N processes. Prints the max abs
logit difference (true vocabulary only), both losses and the greedy-token agreement; exits 1
when the logit difference passes --tol. Works after training too, to check an export.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from megatron_chimed.convert.verify import main

if __name__ == "__main__":
    sys.exit(main())
