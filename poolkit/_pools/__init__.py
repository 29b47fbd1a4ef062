"""The pools: WorkerPool (asyncio workers) and ThreadPool (worker threads) on one shared core,
with retry policies, jobs, map() and the door from other threads into a WorkerPool.  They may
import ``_core`` and ``_primitives`` (a ThreadPool's queue is a channel, a pool's ``limit=`` a
limit), never the leak tools, metrics or the command above them.
"""
