"""Performance and scale benchmarks, run from the repository root: ``python -m benchmarks.run``
(``make bench``); results go to ``benchmarks/results/``.
"""
