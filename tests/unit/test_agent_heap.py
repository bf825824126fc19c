"""What the agent keeps out of the cyclic collector after a round (daemon.Agent._freeze_heap): the whole heap
is collected after a round that may have let go of cycles (an engine replaced, a file read whole), only what
was made since after a round of a few live edits, and the whole heap again every FULL_EVERY such rounds."""

from __future__ import annotations

import gc
import weakref

from bpfgate.agent import daemon


def test_whole_collections_after_big_rounds_and_every_full_every_small_ones(tmp_path, monkeypatch):
    unfrozen = []
    monkeypatch.setattr(gc, "unfreeze", lambda: unfrozen.append(True))
    monkeypatch.setattr(gc, "freeze", lambda: None)
    agent = daemon.Agent(str(tmp_path), state_dir=str(tmp_path / "state"))
    agent._freeze_heap(whole=False)
    assert not unfrozen   # not serving (--once, tests): nothing frozen, nothing collected
    agent.serving = True
    agent._freeze_heap(whole=True)
    assert len(unfrozen) == 1
    for i in range(daemon.FULL_EVERY - 1):
        agent._freeze_heap(whole=False)
    assert len(unfrozen) == 1   # small rounds: only the young objects
    agent._freeze_heap(whole=False)
    assert len(unfrozen) == 2   # the FULL_EVERY-th: the whole heap
    agent._freeze_heap(whole=False)
    agent._freeze_heap(whole=True)
    assert len(unfrozen) == 3 and agent._since_whole == 0


def test_a_cycle_let_go_is_collected_at_once_if_young_and_at_the_next_whole_collection_if_frozen(tmp_path):
    class Node:
        pass

    def cycle() -> weakref.ref:   # a node only reachable from itself
        node = Node()
        node.me = node
        return weakref.ref(node)

    agent = daemon.Agent(str(tmp_path), state_dir=str(tmp_path / "state"))
    agent.serving = True
    try:
        agent._freeze_heap(whole=True)
        young = cycle()                          # made since the last freeze, let go
        held = [Node()]
        held[0].me = held[0]
        frozen = weakref.ref(held[0])
        agent._freeze_heap(whole=False)          # a small round: collects the young cycle, freezes `held`'s
        assert young() is None and frozen() is not None
        held.clear()                             # let go once frozen
        agent._freeze_heap(whole=False)
        assert frozen() is not None              # out of the collector's reach until ...
        agent._freeze_heap(whole=True)
        assert frozen() is None                  # ... the next whole collection
    finally:
        gc.unfreeze()   # this process is pytest's, not an agent's
