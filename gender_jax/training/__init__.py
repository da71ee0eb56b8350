"""A training run: its state and loop, checkpoints, run directory, and the sharded forward path."""
