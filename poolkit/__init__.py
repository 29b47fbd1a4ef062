"""poolkit: bounded concurrency for asyncio and threads.

This module is the map of the library: every public name is imported here, and nowhere else
needs to be looked at to know what poolkit offers.  The layers, bottom up (a module only imports
from layers below it)::

    _exceptions, _checks        errors and argument checks
    _channel                    Channel, select            (asyncio tasks and threads)

``poolkit.testing`` (a public module) holds the virtual-time event loop used by the tests.
"""

from ._channel import Channel as Channel
from ._channel import ChannelStatistics as ChannelStatistics
from ._channel import ReceiveCase as ReceiveCase
from ._channel import SelectCase as SelectCase
from ._channel import Selected as Selected
from ._channel import SendCase as SendCase
from ._channel import select as select
from ._channel import select_blocking as select_blocking
from ._channel import select_nowait as select_nowait
from ._exceptions import ChannelClosed as ChannelClosed
from ._exceptions import EndOfChannel as EndOfChannel
from ._exceptions import PoolkitError as PoolkitError
from ._exceptions import WouldBlock as WouldBlock

__version__ = "0.1.0.dev0"

__all__ = [
    "Channel",
    "ChannelClosed",
    "ChannelStatistics",
    "EndOfChannel",
    "PoolkitError",
    "ReceiveCase",
    "SelectCase",
    "Selected",
    "SendCase",
    "WouldBlock",
    "select",
    "select_blocking",
    "select_nowait",
]
