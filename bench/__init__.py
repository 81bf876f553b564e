"""Benchmarks of the trainer (SFT, reward model, PPO) and the operator: ``python -m bench``.

See ``bench/README.md`` for what is measured, how, and the latest figures.
"""
