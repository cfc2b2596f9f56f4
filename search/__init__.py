"""The outer loop: the PPO controller (ppo.py), its Ray Tune searcher (searcher.py), the proxy
trial (trial.py), the configuration (config.py) and the search command (run.py)."""
