"""Decoding: KV caches, prefill, HierGen and RecGen, flat decoding, sampling."""
