"""The global KV caches as units (`photon.inference.cache`): what a pass reads and writes, rows
as slots, and the ring of a sliding window. Their use by the decoders is tests/test_decoders.py
and tests/test_generate.py."""

import pytest
import torch

from photon.errors import CacheFullError
from photon.inference.cache import KVCache, RingKVCache

H, DH = 2, 4


def kv(batch: int, T: int, start: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values [batch, H, T, DH] whose every entry holds its position + `start`."""
    positions = torch.arange(T, dtype=torch.float32) + start
    k = positions[None, None, :, None].expand(batch, H, T, DH).clone()
    return k, -k


def pass_through(cache: KVCache, T: int, start: float, kept=None):
    """One layer's pass of T positions: prepare, update, advance; what attention read."""
    positions, mask = cache.prepare(T, torch.device("cpu"))
    keys, _ = cache.update(0, *kv(len(cache.lengths), T, start))
    cache.advance(T if kept is None else kept)
    return positions, mask, keys


def test_a_cache_returns_what_it_holds_and_refuses_to_overflow():
    cache = KVCache(1, 2, H, DH, 6, "cpu", torch.float32)
    _, mask, keys = pass_through(cache, 3, 0)
    assert mask is None and keys.shape[2] == 3
    positions, mask, keys = pass_through(cache, 2, 3)
    assert positions.tolist() == [[3, 4]] and keys[0, 0, :, 0].tolist() == [0, 1, 2, 3, 4]
    assert cache.lengths.tolist() == [5, 5]
    with pytest.raises(CacheFullError, match="capacity of 6"):
        cache.prepare(2, torch.device("cpu"))
    with pytest.raises(ValueError, match="kernel"):
        KVCache(1, 1, H, DH, 8, "cpu", torch.float32, kernel="flash")


def test_ragged_sequences_get_their_own_positions_and_masks():
    cache = KVCache(1, 2, H, DH, 8, "cpu", torch.float32)
    pass_through(cache, 3, 0, kept=torch.tensor([3, 1]))
    positions, mask, _ = pass_through(cache, 1, 10)
    assert positions.tolist() == [[3], [1]]
    assert mask[:, 0, 0].tolist() == [[True] * 4, [True, True, False, False]]


def test_rows_are_views_and_copies_move_only_filled_positions():
    cache = KVCache(1, 3, H, DH, 8, "cpu", torch.float32)
    view = cache.rows(1, 3)
    pass_through(view, 4, 0)
    assert cache.lengths.tolist() == [0, 4, 4]  # written through the view
    assert cache.k[0, 1, 0, :4, 0].tolist() == [0, 1, 2, 3]
    cache.copy_rows([2], [0])
    assert cache.lengths.tolist() == [4, 4, 4] and torch.equal(cache.k[0, 0], cache.k[0, 2])
    cache.reset()
    assert cache.lengths.tolist() == [0, 0, 0]


@pytest.mark.parametrize("passes", [[3, 1, 1, 1, 1, 1, 1], [7, 2], [1] * 9, [12]])
def test_a_ring_holds_the_last_window_of_positions(passes):
    """Whatever the passes, the ring holds positions length-W..length-1 in slot p mod W, and a
    pass's queries see exactly the keys within the window."""
    W = 4
    ring = RingKVCache(1, 1, H, DH, W, "cpu", torch.float32)
    seen = 0
    for T in passes:
        positions, mask, keys = pass_through(ring, T, seen)
        key_positions = keys[0, 0, :, 0]  # each key holds its position (ring slots, then new)
        for i, p in enumerate(positions[0].tolist()):
            visible = key_positions[mask[0, 0, i]].tolist()
            assert sorted(visible) == list(range(max(0, p - W + 1), p + 1)), (T, p)
        seen += T
    held = ring.k[0, 0, 0, :, 0].tolist()
    assert sorted(held) == list(range(seen - W, seen))
    assert all(int(p) % W == slot for slot, p in enumerate(held))
    assert ring.nbytes == 2 * H * W * DH * 4


def test_a_ring_writes_only_the_positions_a_sequence_keeps():
    """A right-padded pass: the second sequence keeps 2 of 6 positions; its padding must not
    overwrite the positions the window still needs."""
    W = 4
    ring = RingKVCache(1, 2, H, DH, W, "cpu", torch.float32)
    pass_through(ring, 3, 0)
    pass_through(ring, 6, 3, kept=torch.tensor([6, 2]))
    assert ring.lengths.tolist() == [9, 5]
    assert sorted(ring.k[0, 0, 0, :, 0].tolist()) == [5, 6, 7, 8]
    assert sorted(ring.k[0, 1, 0, :, 0].tolist()) == [1, 2, 3, 4]


def test_ring_rows_are_views_with_their_own_pending_pass():
    ring = RingKVCache(1, 2, H, DH, 4, "cpu", torch.float32)
    view = ring.rows(1, 2)
    pass_through(view, 6, 0)
    assert ring.lengths.tolist() == [0, 6] and not ring._new
    assert sorted(ring.k[0, 1, 0, :, 0].tolist()) == [2, 3, 4, 5]
    ring.copy_rows([1], [0])
    assert torch.equal(ring.k[0, 0], ring.k[0, 1]) and ring.lengths.tolist() == [6, 6]
