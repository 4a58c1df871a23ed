"""histograph: an experiment framework for GNN readouts and depth.

HISTOGRAPH (Galron, Sinai, Maron, Eliasof, "Learning from Historical Activations in Graph Neural
Networks", ICLR 2026, https://arxiv.org/abs/2601.01123) and the usual baselines, trained with
Lightning and composed with Hydra.
"""

__version__ = "0.1.0"
