"""Kubeflow Pipelines component suite: each sub-package is one pipeline step with its own CLI."""
