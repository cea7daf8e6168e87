"""Experiment scripts, run from the repository root as modules: ``python -m experiments.<name>``.

They use the public API of :mod:`pyro_sdlgm`; results go to ``experiments/results/``.
"""
