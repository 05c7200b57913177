"""The fixed leading layers' outputs, computed once per training row instead of once per iteration.

In the heads stage (METHOD §5.1, steps 4..3+m) every shared layer is fixed, and in stage 2
the first six convolutions are; under the default `global` reading their BatchNorms
use their stored statistics. Those layers are then a fixed function of each face,
and Caffe recomputes the same pool4 (heads) or pool3 (stage 2) every time a face
comes round again (the paper's 60k iterations of batch 64 pass over the training
split many times). The torch engine computes them once, in batches of the net's
batch size from row 0 of the split, and feeds each iteration the rows Caffe's data
layer would give (Feed's arithmetic), so the layers after them train on the values
Caffe computes, up to float32 rounding (tests/test_engine.py holds stage 2 and the
heads to Caffe with the cache on).

The fixed prefix: layers reached only from data tops, with no blob that learns, and
each a function of one row at a time: Convolution, InnerProduct, Pooling, ReLU,
Scale, and BatchNorm with use_global_stats. Under `batch` (FROZEN_BN_STAGE2 or
FROZEN_BN_HEADS=batch) a BatchNorm mixes the rows of a batch, so the prefix stops
before it (at conv11, not worth keeping). The cache is rebuilt when any blob of the
prefix is written (loading weights, restoring a snapshot), which torch's version
counters show.
"""

from __future__ import annotations

import torch

from mcl.engine.feeds import Feed
from mcl.engine.fused import forward_layers

ROW_WISE = ("Convolution", "InnerProduct", "Pooling", "ReLU", "Scale", "BatchNorm")
MAX_BYTES = 1 << 30  # above this the fixed prefix runs every iteration, as in Caffe


class FixedPrefixCache:
    """The frontier blobs of the fixed prefix for every row of their feed, and the layers they replace."""

    def __init__(self, net, feed_list: list[Feed], skip: list[str], frontier: dict[str, Feed]):
        self.net, self.feeds, self.skip, self.frontier = net, feed_list, skip, frontier
        self.tensors = [t for name in skip for t in net.layer(name).blobs()]
        self.versions = None
        self.cached: list[Feed] = []

    def _stale(self) -> bool:
        return self.versions != [t._version for t in self.tensors]

    @torch.no_grad()
    def build(self) -> None:
        """Run the prefix over every row of each source feed, in batches from row 0."""
        net = self.net
        self.cached = []
        by_feed: dict[int, list[str]] = {}
        for blob, feed in self.frontier.items():
            by_feed.setdefault(id(feed), []).append(blob)
        for feed in self.feeds:
            blobs = by_feed.get(id(feed))
            if not blobs:
                continue
            parts: dict[str, list[torch.Tensor]] = {b: [] for b in blobs}
            for start in range(0, feed.rows, feed.batch_size):
                rows = {}
                for top, values in feed.tops.items():
                    chunk = values[start:start + feed.batch_size]
                    rows[top] = feed.transform(chunk) if feed.transform else chunk
                out = forward_layers(net, rows, self.skip)
                for b in blobs:
                    parts[b].append(out[b])
            self.cached.append(Feed(f"{feed.layer} (fixed prefix)", {b: torch.cat(p) for b, p in parts.items()},
                                    feed.batch_size))
        self.versions = [t._version for t in self.tensors]

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        if self._stale():
            self.build()
        out = {}
        for f in self.cached:
            out.update(f.batch(index))
        return out


def plan(net, feed_list: list[Feed]) -> FixedPrefixCache | None:
    """The fixed-prefix cache of a net and its feeds, or None where no convolution is fixed row by row."""
    source = {top: f for f in feed_list for top in f.tops}
    fixed: dict[str, Feed] = dict(source)  # blob -> the one feed it is a function of, row by row
    skip, frontier = [], {}
    for s in net.specs:
        if s.name in net.input_layer_names:
            continue
        feed = _fixed_feed(net, s, fixed)
        if feed is None:  # runs every iteration: what it reads of the prefix is cached
            frontier.update({b: fixed[b] for b in s.bottoms if b in fixed and b not in source})
            for t in s.tops:
                fixed.pop(t, None)  # (an in-place top is no longer fixed)
            continue
        if any(t in frontier for t in s.tops):
            return None  # would change a blob a later layer already read: keep Caffe's order
        skip.append(s.name)
        for t in s.tops:
            fixed[t] = feed
    # Worth it from two convolutions on (one alone costs little to recompute, and its maps are
    # larger than the face), and within MAX_BYTES.
    if sum(net.layer(n).spec.type == "Convolution" for n in skip) < 2 or not frontier:
        return None
    for feed in {id(f): f for f in frontier.values()}.values():
        if sum(_row_size(net.shapes[b]) for b, f in frontier.items() if f is feed) * 4 * feed.rows > MAX_BYTES:
            return None
    return FixedPrefixCache(net, feed_list, skip, frontier)


def _fixed_feed(net, s, fixed: dict):
    """The one feed layer `s` depends on, if it is a fixed function of one row of it; else None."""
    if s.type not in ROW_WISE or not s.bottoms or not all(b in fixed for b in s.bottoms):
        return None
    mod = net.layer(s.name)
    if any(t.requires_grad for t in mod.blobs()):
        return None
    if s.type == "BatchNorm" and not mod.use_global_stats:
        return None
    feeds = {id(fixed[b]): fixed[b] for b in s.bottoms}
    if len(feeds) != 1:
        return None
    if any(t in fixed and t not in s.bottoms for t in s.tops):
        return None  # writes over a fixed blob computed earlier by another layer
    return next(iter(feeds.values()))


def _row_size(shape) -> int:
    n = 1
    for d in tuple(shape)[1:]:
        n *= int(d)
    return n
