"""Reproducing the paper's study: the low-gradient simulation, experiment specs, sweeps."""
