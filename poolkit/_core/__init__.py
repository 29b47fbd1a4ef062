"""The bottom layer, which every other layer stands on: errors (``_exceptions``), argument checks
(``_checks``), the weak registry of live objects and of where poolkit's tasks and threads came
from (``_registry``), and the one way a task or thread waits in a primitive and is woken
(``_wait``).  It imports nothing of poolkit's from outside this package.
"""
