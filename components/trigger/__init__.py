"""The trigger: each new object under the sources starts exactly one pipeline run."""
