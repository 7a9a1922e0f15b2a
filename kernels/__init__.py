"""Numba kernels of pintopt, importable as ``pintopt.kernels`` without MPI.

Submodules: activations, dense, residual, losses, krylov, fista, admm, updates (fused optimiser
steps), regression (the co-state regression of the parallel-in-time method), delay_compensation
(DC-ASGD's delay-compensated gradient). Import the one you need, e.g.
``from pintopt.kernels import residual``; this package does not import them eagerly so that
``import pintopt`` stays cheap.
"""
