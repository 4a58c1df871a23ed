"""Train a graph classifier: ``python train.py readout=histograph model.layers=32``.

A thin entry point; the command line is :mod:`histograph.cli`, one job :func:`histograph.train.run`
(configs: ``configs/train.yaml``).
"""

import sys

try:
    from histograph.cli import main
except KeyboardInterrupt:  # Ctrl+C while Python is still importing: one line, no traceback
    print("interrupted: Ctrl+C before training started; nothing was trained.", file=sys.stderr)
    raise SystemExit(130) from None

if __name__ == "__main__":
    main()
