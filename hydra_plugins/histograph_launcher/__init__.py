"""histograph's Hydra launcher plugin (Hydra loads launchers from the ``hydra_plugins`` package
only); the implementation is :mod:`histograph.sweeps.slurm`."""
