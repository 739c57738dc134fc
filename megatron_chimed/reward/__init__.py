"""The reward model (paper section 2.3, appendix A); its data: docs/data_formats.md §reward.

    data.py    ranked preference records (K responses per prompt, best first)
    batch.py   pairing modes (adjacent / all / binary), tokenisation, padding
    model.py   the GPT trunk with a scalar value head (imports megatron-core)
    loss.py    pairwise loss, pairwise and full-ranking accuracy
    stage.py   the `rm` stage of the shared training loop
    score.py   `tools/score.py`: score (prompt, response) JSONL with an RM checkpoint

Modules are imported directly (no re-exports here) so that reading data does not import
megatron-core.
"""
