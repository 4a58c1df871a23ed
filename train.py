"""Train a graph classifier: ``python train.py readout=histograph model.layers=32``.

A thin entry point; the command line is :mod:`histograph.cli`, one job :func:`histograph.train.run`
(configs: ``configs/train.yaml``).
"""

from histograph.cli import main

if __name__ == "__main__":
    main()
