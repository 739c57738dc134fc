#!/usr/bin/env python3
"""Check a conversion: the same tokens through HF `transformers` and the megatron checkpoint.

python tools/verify_conversion.py --hf DIR --megatron DIR --tp N [--tol 1e-4]

Started without torchrun, it starts itself under torchrun with N processes. Prints the max abs
logit difference (true vocabulary only), both losses and the greedy-token agreement; exits 1
when the logit difference passes --tol. Works after training too, to check an export.
"""

from __future__ import annotations

import argparse
import os
import sys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--hf", required=True)
    ap.add_argument("--megatron", required=True, help="checkpoint root or iter_* folder")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--tol", type=float, default=1e-4, help="max abs logit difference allowed")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--seq-length", type=int, default=64)
    args = ap.parse_args()
    if "LOCAL_RANK" not in os.environ:
        # --standalone: a private rendezvous on a free local port.
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        os.execv(sys.executable, [*torchrun, f"--nproc_per_node={args.tp}", *sys.argv])

    from megatron_chimed.convert.verify import verify
    from megatron_chimed.platform import destroy

    result = verify(args.hf, args.megatron, args.tp, args.precision, seq_length=args.seq_length)
    destroy()
    if result is None:
        return
    print(
        f"tp={args.tp} max_abs_logit_diff={result.max_abs_logit_diff:.3g} "
        f"loss_hf={result.loss_hf:.6f} loss_megatron={result.loss_megatron:.6f} "
        f"loss_diff={result.loss_diff:.3g} greedy_agreement={result.greedy_agreement:.4f}"
    )
    if result.max_abs_logit_diff > args.tol:
        print(f"FAIL: max abs logit difference above --tol {args.tol}", file=sys.stderr)
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
