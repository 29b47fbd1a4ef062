"""poolkit's benchmarks: ``python -m benchmarks`` runs them all and prints one table.

Every poolkit figure is printed next to the alternatives measured in the same run, with the ratio
poolkit/alternative (below 1.00 means poolkit is faster).  Benchmarks are not tests: they assert
nothing, and a smoke test only checks that they still run at a tiny scale.
"""
