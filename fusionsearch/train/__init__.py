"""Training: a fold's batches, the plain training loop with its report callback, inference, profiling.

torch, no Ray: :mod:`trainables` wraps :func:`fusionsearch.train.loop.fit` for Ray Tune.
"""
