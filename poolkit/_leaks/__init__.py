"""Leak hunting, public as :mod:`poolkit.leaks`: what each task and thread is doing, which tasks
nothing alive can wake, snapshots, no_leaks and the growth watchdog.  It may import ``_core``,
``_primitives`` and ``_pools``, but imports only ``_core``: it names the primitives' and pools'
waiting functions by string (``poolkit._pools._pool:WorkerPool.submit``) to label what a task
waits in, so the tables in ``_introspect`` must follow any move (a test resolves every entry).
"""
