"""Tune step: a hyperparameter search (Katib on a cluster, optuna here) whose best set trains."""
