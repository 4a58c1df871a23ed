"""``hydra/launcher=slurm``'s class, registered where Hydra looks for plugins.

Hydra instantiates launchers only from classes defined in the ``hydra_plugins`` namespace
package; the behaviour (checked requests, no resubmission of finished jobs, lost jobs reported)
lives in :class:`histograph.sweeps.slurm.CheckedSlurmLauncher`.

Hydra imports every plugin module at every start, so this one must import without the optional
``slurm`` extra (submitit, hydra-submitit-launcher): otherwise each ``python train.py`` on a
machine without it printed Hydra's "Error importing ... Plugin is incompatible" warning (seen on
the first GPU machine). Without the extra the launcher is a stand-in that says what to install.
"""

try:
    from histograph.sweeps.slurm import CheckedSlurmLauncher
except ImportError as _missing:  # the optional slurm extra is not installed
    from hydra.plugins.launcher import Launcher

    from histograph.errors import UserError

    _REASON = f"{type(_missing).__name__}: {_missing}"

    class HistographSlurmLauncher(Launcher):
        """Stand-in without the ``slurm`` extra: selecting it fails with what to install."""

        def __init__(self, **_: object) -> None:
            raise UserError(
                "hydra/launcher=slurm needs the slurm extra (submitit, hydra-submitit-launcher; "
                f"{_REASON}): pip install 'histograph[slurm]'.")

        def setup(self, *args, **kwargs) -> None:  # pragma: no cover - __init__ raises
            raise NotImplementedError

        def launch(self, *args, **kwargs):  # pragma: no cover - __init__ raises
            raise NotImplementedError
else:
    class HistographSlurmLauncher(CheckedSlurmLauncher):
        """See :class:`histograph.sweeps.slurm.CheckedSlurmLauncher`."""
