"""Training (paper §5.2): window assignment, loss, data, the loop, its checkpoints, preemption and validation."""
