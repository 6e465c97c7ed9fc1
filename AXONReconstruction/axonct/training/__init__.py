"""The trainer: one stage at a time, exact resume, EMA, precision per machine, torch.distributed."""
