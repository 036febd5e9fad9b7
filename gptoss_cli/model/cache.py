"""KV cache: full-attention layers preallocated to the planned context, sliding layers as a ring of
``sliding_window`` slots.

A ring cannot be rolled back (its older keys are overwritten), yet a chat must rewind when a new turn drops the
previous turn's analysis. So the cache keeps small snapshots of the rings (3 MB for gpt-oss-20b) at positions the
engine marks, and ``trim(n)`` returns the longest exact prefix it can keep (``<= n``); the caller re-feeds the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ContextLengthError
from .config import GptOssConfig


@dataclass
class LayerCache:
    k: torch.Tensor  # [capacity, n_kv_heads, head_dim]
    v: torch.Tensor
    pos: torch.Tensor  # [capacity] absolute position held by each slot, -1 when empty
    ring: bool


class KVCache:
    max_snapshots = 8

    def __init__(self, cfg: GptOssConfig, context_length: int, device: torch.device | str,
                 dtype: torch.dtype = torch.bfloat16) -> None:
        self.cfg = cfg
        self.context_length = context_length
        self.window = cfg.sliding_window
        self.length = 0
        self.layers: list[LayerCache] = []
        for layer in range(cfg.num_hidden_layers):
            ring = cfg.is_sliding(layer)
            cap = min(self.window, context_length) if ring else context_length
            shape = (cap, cfg.num_key_value_heads, cfg.head_dim)
            self.layers.append(LayerCache(
                k=torch.zeros(shape, dtype=dtype, device=device),
                v=torch.zeros(shape, dtype=dtype, device=device),
                pos=torch.full((cap,), -1, dtype=torch.long, device=device),
                ring=ring,
            ))
        self._snapshots: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {0: self._ring_state(empty=True)}

    @property
    def nbytes(self) -> int:
        return sum(lc.k.nbytes + lc.v.nbytes + lc.pos.nbytes for lc in self.layers)

    def check_room(self, n_new: int) -> None:
        if self.length + n_new > self.context_length:
            raise ContextLengthError(
                f"the conversation needs {self.length + n_new} tokens but the context holds {self.context_length}",
                hint="Start a new conversation (/reset), or load with a larger --context if memory allows.")

    def update(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor,
               positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Store this chunk's keys/values and return (keys, values, key positions) its queries attend over.

        ``positions`` must be ``self.length .. self.length + T - 1``; ``advance(T)`` is called once all layers ran.
        """
        lc = self.layers[layer]
        start, T = self.length, k_new.shape[0]
        if not lc.ring:
            lc.k[start:start + T] = k_new
            lc.v[start:start + T] = v_new
            lc.pos[start:start + T] = positions
            end = start + T
            return lc.k[:end], lc.v[:end], lc.pos[:end]
        # Queries of this chunk may need keys the ring is about to overwrite: attend over ring + chunk.
        keys = torch.cat((lc.k, k_new))
        values = torch.cat((lc.v, v_new))
        kpos = torch.cat((lc.pos, positions))
        keep = min(T, lc.k.shape[0])
        slots = positions[T - keep:] % lc.k.shape[0]
        lc.k[slots] = k_new[T - keep:]
        lc.v[slots] = v_new[T - keep:]
        lc.pos[slots] = positions[T - keep:]
        return keys, values, kpos

    def update_static(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor, positions: torch.Tensor,
                      kv_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``update`` for one decode token with the position on the device (CUDA-graph safe): full layers attend
        over their first ``kv_len`` slots (a bucket >= length; empty slots hold position -1), sliding layers over
        their ring, which after this write holds exactly the window."""
        lc = self.layers[layer]
        slots = positions % lc.k.shape[0] if lc.ring else positions
        lc.k.index_copy_(0, slots, k_new)
        lc.v.index_copy_(0, slots, v_new)
        lc.pos.index_copy_(0, slots, positions)
        if lc.ring:
            return lc.k, lc.v, lc.pos
        return lc.k[:kv_len], lc.v[:kv_len], lc.pos[:kv_len]

    def advance(self, n: int) -> None:
        self.length += n

    def drop_uncommitted(self) -> None:
        """Empty the slots a decode step at position ``length`` may have written without being committed (the
        engine queues a step before it knows its token continues the text). Always safe: no query at a position
        >= length reads those slots (a ring's held the key just outside that position's window), and a rewind
        below ``length`` restores the rings from a snapshot."""
        for lc in self.layers:
            cap = lc.pos.shape[0]
            slot = self.length % cap if lc.ring else self.length
            if slot < cap:
                lc.pos[slot] = -1

    # ---- rewinding ------------------------------------------------------------------------
    def _ring_state(self, empty: bool = False) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        out = []
        for lc in self.layers:
            if lc.ring:
                pos = torch.full_like(lc.pos, -1) if empty else lc.pos.clone()
                out.append((lc.k.clone(), lc.v.clone(), pos))
        return out

    def mark(self) -> None:
        """Remember the rings at the current length so a later ``trim`` can come back here exactly."""
        if self.length in self._snapshots:
            return
        self._snapshots[self.length] = self._ring_state()
        while len(self._snapshots) > self.max_snapshots:
            del self._snapshots[min(p for p in self._snapshots if p != 0)]

    def trim(self, n: int, force: bool = False) -> int:
        """Rewind to at most ``n`` tokens; returns the exact prefix length kept (the caller re-feeds the rest).

        ``force`` restores a snapshot even at the current length: for a forward interrupted midway, whose rings
        may hold part of a chunk.
        """
        if n >= self.length and not force:
            return self.length
        n = min(n, self.length)
        target = max(p for p in self._snapshots if p <= n)
        if target != self.length or force:
            rings = iter(self._snapshots[target])
            for lc in self.layers:
                if lc.ring:
                    k, v, pos = next(rings)
                    lc.k.copy_(k)
                    lc.v.copy_(v)
                    lc.pos.copy_(pos)
                else:
                    lc.pos[target:] = -1
        for p in [p for p in self._snapshots if p > target]:
            del self._snapshots[p]
        self.length = target
        return target

    def reset(self) -> None:
        self.trim(0)
