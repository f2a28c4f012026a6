"""The pipeline around the steps: its definition (kfp DSL), the local runner, submission.

Runs in the pipeline-SDK environment (.venv-sdk: kfp, protobuf 6), never in a step image.
`pipeline.py` at the repository root is the command line over these modules.
"""
