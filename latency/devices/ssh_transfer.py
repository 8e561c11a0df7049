"""The transfer format of a batch of models sent to an SSH device (pure functions, no I/O).

A table's models are rendered from a template with weights sliced from one fixed random pool
(`latency.tflite_rewrite`), so they are big and random weights barely compress. With
``transfer = "pool"`` the pool is uploaded to the device once (8 MiB, cached there by its hash),
and every model is sent as its few non-weight bytes plus (offset, length) references into the
pool, zlib-compressed, a tiny fraction of the model (docs/measuring.md): the device rebuilds the
exact same bytes (checked by CRC-32), so what is timed is unchanged.
``transfer = "zlib"`` sends whole models, compressed. The decoder is the device's
(`remote_feeder.decode_batch`); `decode_batch` here runs that same code on this side.
"""
from __future__ import annotations

import hashlib
import json
import threading
import zlib
from dataclasses import dataclass

import numpy as np

from . import remote_feeder
from .base import ModelJob

__all__ = ["PoolIndex", "TransferStats", "decode_batch", "encode_batch", "pool_index"]

_MIN_REF_BYTES = 64  # shorter pool matches stay literal (a reference costs ~20 bytes of JSON)
_PROBE_STRIDE = 16  # probe every 16th word: every pool slice of >= 17 floats is found


class PoolIndex:
    """Finds slices of the weight pool inside a model: sorted 64-bit keys of every word pair."""

    def __init__(self, pool: bytes) -> None:
        self.pool = pool
        self.sha256 = hashlib.sha256(pool).hexdigest()
        self.words = np.frombuffer(pool, dtype="<u4")
        keys = self._pairs(self.words, np.arange(len(self.words) - 1))
        self.order = np.argsort(keys, kind="stable")  # ~0.4 s once per process
        self.sorted_keys = keys[self.order]

    @staticmethod
    def _pairs(words: np.ndarray, at: np.ndarray) -> np.ndarray:
        return words[at].astype(np.uint64) | (words[at + 1].astype(np.uint64) << np.uint64(32))

    def segments(self, model: bytes) -> list[tuple[int, int, int]]:
        """Non-overlapping (model offset, length, pool offset) byte ranges equal in both."""
        found: list[tuple[int, int, int]] = []
        pool_words = self.words
        for residue in range(4):  # slices sit at any 4-byte alignment of the model
            n = (len(model) - residue) // 4
            if n < 2:
                continue
            words = np.frombuffer(model, dtype="<u4", count=n, offset=residue)
            probes = np.arange(0, n - 1, _PROBE_STRIDE)
            keys = self._pairs(words, probes)
            by_key = np.argsort(keys)  # sorted needles make the search cache-friendly
            idx = np.empty_like(by_key)
            idx[by_key] = np.searchsorted(self.sorted_keys, keys[by_key])
            idx = np.minimum(idx, len(self.sorted_keys) - 1)
            hits = np.nonzero(self.sorted_keys[idx] == keys)[0]
            if not len(hits):
                continue
            at, pool_at = probes[hits], self.order[idx[hits]].astype(np.int64)
            # one run per slice: a hit continuing the previous one (same offset) adds nothing
            fresh = np.ones(len(hits), dtype=bool)
            fresh[1:] = (np.diff(hits) != 1) | (np.diff(pool_at - at) != 0)
            covered_to = -1
            for j, p in zip(at[fresh].tolist(), pool_at[fresh].tolist()):
                if j < covered_to:
                    continue  # inside the run found from an earlier probe
                # extend the match backwards and forwards word by word (vectorised)
                back = min(j, p)
                if back:
                    same = words[j - back:j][::-1] == pool_words[p - back:p][::-1]
                    back = back if same.all() else int(np.argmin(same))
                ahead = min(n - j, len(pool_words) - p)
                same = words[j:j + ahead] == pool_words[p:p + ahead]
                ahead = ahead if same.all() else int(np.argmin(same))
                start, end = j - back, j + ahead
                covered_to = end
                if (end - start) * 4 >= _MIN_REF_BYTES:
                    found.append((residue + 4 * start, 4 * (end - start), 4 * (p - back)))
        found.sort()
        merged: list[tuple[int, int, int]] = []
        last_end = 0
        for off, length, pool_off in found:
            if off < last_end:  # overlaps the previous match: keep only the new tail
                cut = last_end - off
                off, length, pool_off = off + cut, length - cut, pool_off + cut
            if length >= _MIN_REF_BYTES:
                merged.append((off, length, pool_off))
                last_end = off + length
        return merged


_pool_lock = threading.Lock()
_pool_cache: list[PoolIndex | None] = []


def pool_index() -> PoolIndex | None:
    """The index of `tflite_rewrite`'s weight pool, or None where that module has none."""
    with _pool_lock:
        if not _pool_cache:
            from .. import tflite_rewrite

            make_pool = getattr(tflite_rewrite, "_random_pool", None)
            _pool_cache.append(PoolIndex(bytes(make_pool())) if make_pool is not None else None)
        return _pool_cache[0]


def encode_batch(jobs: list[ModelJob], pool: PoolIndex | None = None, level: int = 6) -> bytes:
    """The compressed batch a device's feeder decodes (see `decode_batch`).

    Layout before zlib: a JSON header line, then per model a JSON line
    ``{"cell_id", "size", "crc", "parts": [[literal bytes, pool offset, pool bytes], ...]}``
    followed by the literal bytes of its parts.
    """
    out = [json.dumps({"format": remote_feeder.BATCH_FORMAT, "pool": pool.sha256 if pool else None,
                       "models": len(jobs)}, separators=(",", ":")).encode() + b"\n"]
    for job in jobs:
        model = bytes(job.model)
        parts, literals, pos = [], [], 0
        for off, length, pool_off in (pool.segments(model) if pool else []):
            parts.append([off - pos, pool_off, length])
            literals.append(model[pos:off])
            pos = off + length
        parts.append([len(model) - pos, 0, 0])
        literals.append(model[pos:])
        header = {"cell_id": job.cell_id, "size": len(model), "crc": zlib.crc32(model), "parts": parts}
        out.append(json.dumps(header, separators=(",", ":")).encode() + b"\n")
        out.extend(literals)
    return zlib.compress(b"".join(out), level)


def decode_batch(data: bytes, pool: bytes | None = None) -> list[tuple[int, bytes]]:
    """The device's decoder run on this side (tests, tools): (cell_id, model) pairs of an
    `encode_batch` blob, with `pool` standing in for the pool file the batch names."""
    def load_pool(sha256: str) -> bytes:
        if pool is None:
            raise ValueError(f"the batch names weight pool {sha256[:16]}, and no pool was given")
        return pool

    return remote_feeder.decode_batch(data, load_pool)


@dataclass
class TransferStats:
    """Bytes a device sent for models (the setup upload of runner and pool counted apart)."""

    batches: int = 0
    models: int = 0
    model_bytes: int = 0  # the models as rendered
    sent_bytes: int = 0  # the encoded batches that went over SSH
    setup_bytes: int = 0  # runner, feeder and pool uploads

    @property
    def bytes_per_model(self) -> float:
        return self.sent_bytes / self.models if self.models else float("nan")
