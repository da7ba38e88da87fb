"""Deterministic sharding: which shard a record goes to depends on the records alone, never on workers.

Beam's file sinks name shards by the bundles that happened to write them, so the same clips
written by 2 or 16 worker processes (or twice by the same 2) land in different files, and the
records folder's DVC hash changes with every run. Like TFDS, vidseq keys each record by a hash
of its bytes (kept as the 16 digest bytes, which every Beam coder holds: a 128-bit Python int
does not fit Beam's 64-bit VarIntCoder; the bytes sort exactly as the big-endian number would), derives the shard count from the split's total size, and gives each shard a
contiguous range of keys, written in key order: the same clips always make byte-identical
shards, and the key order also mixes videos across and within shards.
"""

from __future__ import annotations

import hashlib
import math

KEY_BITS = 128


def record_key(record: bytes) -> bytes:
    """A stable, uniformly spread 128-bit key of a record's bytes: the 16 bytes of its blake2b digest."""
    return hashlib.blake2b(record, digest_size=KEY_BITS // 8).digest()


def shard_count(total_bytes: int, max_bytes_per_shard: int) -> int:
    """How many shards a split of ``total_bytes`` gets: about ``max_bytes_per_shard`` each, at least 1."""
    return max(1, math.ceil(total_bytes / max(1, max_bytes_per_shard)))


def shard_of(key: bytes, count: int) -> int:
    """The shard (0 .. count - 1) whose key range holds ``key`` (read as a big-endian number)."""
    return (int.from_bytes(key, "big") * count) >> KEY_BITS
