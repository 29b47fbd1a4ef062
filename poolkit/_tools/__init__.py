"""The ``poolkit`` command (``dump``, ``top``, ``demo``) and its demo, the top of the map: it may
import anything in poolkit, the public modules included, and only ``poolkit.__main__`` and the
console script (``poolkit._tools._cli:main``) import it.
"""
