"""Numba kernels of pintopt, importable as ``pintopt.kernels`` without MPI.

Submodules: activations, dense, residual, losses, krylov, fista, admm. Import the one you need,
e.g. ``from pintopt.kernels import residual``; this package does not import them eagerly so that
``import pintopt`` stays cheap.
"""
