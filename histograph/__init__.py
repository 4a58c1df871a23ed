"""histograph: an experiment framework for GNN readouts and depth.

HISTOGRAPH (Galron, Sinai, Maron, Eliasof, "Learning from Historical Activations in Graph Neural
Networks", ICLR 2026, https://arxiv.org/abs/2601.01123) and the usual baselines, trained with
Lightning and composed with Hydra. The layers and where to add a dataset, backbone, readout or
task: docs/architecture.md.
"""

from histograph.resolvers import register as _register_resolvers

__version__ = "0.1.0"

# The configs interpolate ${hg.*} resolvers (job folder names, non-result keys, the root folder);
# registering them on import makes every way of composing the configs (CLI, compose API in tests
# and notebooks, launcher workers that unpickle a job) see them. OmegaConf only, no torch.
_register_resolvers()
