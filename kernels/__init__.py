"""Numba kernels of pintopt, importable as ``pintopt.kernels`` without MPI.

Submodules: activations, dense, residual, losses, krylov, fista, admm, pdadmm (pdADMM's capped
step searches and smooth z update), updates (fused optimiser steps), regression (the co-state
regression of the parallel-in-time method). Import the one you need, e.g. ``from pintopt.kernels
import residual``; this package does not import them eagerly so that ``import pintopt`` stays
cheap.
"""
