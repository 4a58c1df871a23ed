"""Train a graph classifier: ``python train.py readout=histograph model.layers=32``.

A thin entry point; everything lives in :mod:`histograph.train` (see ``configs/train.yaml``).
"""

from histograph.train import main

if __name__ == "__main__":
    main()
