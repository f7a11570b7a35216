"""The search: sampler and pruner, the study and its spec check, the trial loop, the objective,
liveness, checkpoints and workers."""
