"""tools/preprocess_data.py throughput (2 workers) vs the tokenizer's own batch encode rate.

Both measured here on the same text (the bundled pre-train sample, repeated) with the tiny
Ziya tokenizer. Prints the ratio; goal >= 0.85.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from megatron_chimed.data.indexed import preprocess
from megatron_chimed.tokenizer import load_tokenizer

# Heavy imports (torch, megatron) stay inside main(): the tool's spawned workers re-import this
# module, and a user's `tools/preprocess_data.py` does not pay for them either.

REPEAT = 600  # ~8.6M tokens: long enough that worker start-up is amortised


def main() -> None:
    from megatron_chimed.testing.tiny_ziya import make_tiny_ziya, sample_texts

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hf = make_tiny_ziya(tmp / "tiny", shards=1)
        texts = list(sample_texts()) * REPEAT
        src = tmp / "corpus.jsonl"
        src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
        tok = load_tokenizer(hf)
        import megatron.core.datasets.indexed_dataset  # noqa: F401  (one-time import, untimed)

        start = time.perf_counter()
        tokens = sum(len(ids) + 1 for ids in tok.encode_batch(texts))  # + EOD, as preprocess
        encode_rate = tokens / (time.perf_counter() - start)
        start = time.perf_counter()
        stats = preprocess([src], tmp / "out", hf, workers=2, progress=False)
        tool_rate = stats.tokens / (time.perf_counter() - start)
    assert stats.tokens == tokens
    ratio = tool_rate / encode_rate
    print(f"{len(texts)} docs, {tokens} tokens")
    print(
        f"tokenizer encode_batch: {encode_rate:,.0f} tok/s; preprocess 2 workers: "
        f"{tool_rate:,.0f} tok/s"
    )
    print(f"RESULT preprocess_vs_encode={ratio:.2f} goal=0.85")


if __name__ == "__main__":
    main()
