"""Experiment files (YAML: data/<dataset>.yaml profiles, search/<metric>.yaml settings,
retrain/ presets) and `experiments.config`, the config layer that reads them for both stages."""
