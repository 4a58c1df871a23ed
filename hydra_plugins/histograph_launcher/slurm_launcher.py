"""``hydra/launcher=slurm``'s class, registered where Hydra looks for plugins.

Hydra instantiates launchers only from classes defined in the ``hydra_plugins`` namespace
package; the behaviour (checked requests, no resubmission of finished jobs, lost jobs reported)
lives in :class:`histograph.sweeps.slurm.CheckedSlurmLauncher`.
"""

from histograph.sweeps.slurm import CheckedSlurmLauncher


class HistographSlurmLauncher(CheckedSlurmLauncher):
    """See :class:`histograph.sweeps.slurm.CheckedSlurmLauncher`."""
