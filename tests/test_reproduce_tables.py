"""The `setting` column of the comparison tables (histograph.analysis.tables): full vs REDUCED."""

import pandas as pd

from histograph.analysis import tables


def test_full_tu_row():
    runs = pd.DataFrame({"fold": list(range(10)), "seed": [0] * 10})
    assert tables.setting("tu", [350], runs) == "full"


def test_reduced_tu_row_names_epochs_and_folds():
    runs = pd.DataFrame({"fold": [0, 1, 2, 2], "seed": [0] * 4})  # a fold's rerun counts once
    assert tables.setting("tu", [20], runs) == "REDUCED: 20 of 350 epochs, 3 of 10 folds"
    assert tables.setting("tu", [350], runs) == "REDUCED: 3 of 10 folds"


def test_ogb_rows_count_seeds():
    runs = pd.DataFrame({"fold": [0] * 5, "seed": list(range(5))})
    assert tables.setting("ogb", [100], runs) == "full"
    assert tables.setting("ogb", [5], runs) == "REDUCED: 5 of 100 epochs"
    assert tables.setting("ogb", [100], runs.iloc[:3]) == "REDUCED: 3 of 5 seeds"
