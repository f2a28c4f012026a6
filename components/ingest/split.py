"""Deterministic train/eval split: the same id lands in the same split on every run and machine."""

from __future__ import annotations

import hashlib

SPLIT_METHOD = "blake2b-64(salt + id) / 2**64 < eval_fraction -> eval"


def is_eval(row_id: str, eval_fraction: float, salt: str = "") -> bool:
    """Hash the id, not the row position, so adding rows never moves existing ones."""
    digest = hashlib.blake2b((salt + row_id).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < eval_fraction * 2**64
