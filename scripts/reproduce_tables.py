"""Build the comparison tables of results/ (``python -m histograph.analysis.tables``).

    python scripts/reproduce_tables.py tu  --runs logs/reproduce/tu  --out results/tu
    python scripts/reproduce_tables.py ogb --runs logs/reproduce/ogb --out results/ogb
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from histograph.analysis.tables import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
