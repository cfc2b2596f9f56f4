"""The full-size stage: the retrain configuration (config.py), one training process (train.py)
and the retrain command with DDP launch and the CE comparison (run.py)."""
