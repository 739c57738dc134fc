"""Rejection-sampling fine-tuning (paper section 2.3), the `rs` stage; its prompts and files:
docs/data_formats.md §RS.


files.py         the files between phases: shards, DONE markers, phase log, report
selection.py     which answers are kept (top-k per prompt or global top-M), ShareGPT output,
                 score and per-rule statistics (pure functions)
phases.py        the five phases of a round

The stage itself (rounds of phases, resumable) is megatron_chimed/stages/rs.py.
"""
