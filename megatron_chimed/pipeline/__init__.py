"""`chimed pipeline`: the paper's whole training regime, one stage after another."""
