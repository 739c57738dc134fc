"""`chimed plan`: before sbatch, does a training config fit on the GPU and how fast will it run.

    shape.py        what a composed RunConfig means for one GPU (TP/DP, batch, layer spec)
    gpus.py         GPU memory and peak bf16 throughput, interconnects, with their sources
    params.py       parameters per TP rank; megatron's DDP buffer layout and optimizer shards
    activations.py  tensors kept for backward per layer (Korthikanti et al. 2022), recompute
    memory.py       memory per GPU itemised, verdict, what to change when it does not fit
    flops.py        FLOPs per step (Megatron-LM's formula), step time, MFU, DP traffic
    cli.py          the command, and the one-line check launch/submit.py runs

Pure arithmetic on the config: no torch, so the Slurm login node can run it.
"""
