"""Sweep support: job bookkeeping and the Hydra callbacks that run at the end of a multirun."""
