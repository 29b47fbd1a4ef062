"""The primitives: channels and select, CapacityLimiter, TokenBucket, aiolimiter objects as
limits, and Limits and PerKey, which combine them.  They may import ``_core`` (and each other in
the order of the map in ``poolkit/__init__.py``), never a layer above: pools use primitives, not
the reverse.
"""
