"""The serving stacks compared with ours (bench/peer.py): the registry, the shared work, one app per peer."""
