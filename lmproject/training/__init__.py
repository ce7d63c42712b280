"""What training needs besides the model: token windows, the optimizers and schedules, checkpoints."""
