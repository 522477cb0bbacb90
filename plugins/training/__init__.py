"""The training loop: engine, loss terms, hooks, mixed precision, distributed data parallel,
checkpoints, resilience, schedulers and the run launcher."""
