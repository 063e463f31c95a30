"""The training loop, models, objectives' batches and losses, checkpoints."""
