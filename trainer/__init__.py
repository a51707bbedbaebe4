"""Training stage: temporal neighbour sampling, model and distributed training."""
