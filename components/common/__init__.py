"""Code shared by every step: errors, logging, storage, dataset configuration, KFP executor I/O."""
