"""Metrics: every live poolkit object's statistics as metric families, for the debug endpoint and
the Prometheus collector (:mod:`poolkit.debug`, :mod:`poolkit.prometheus`).  It may import every
layer below it, but reads the live objects through ``_core``'s registry alone.
"""
