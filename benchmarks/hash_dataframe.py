"""Hashing a DataFrame of 1e6 rows x 9 columns (8 int64, 1 string): ``nbcache.hash_value`` vs ``joblib.hash``.

Goal: nbcache at least 30x faster than joblib. The string column gets pandas' default dtype for strings
(``str`` since pandas 3, ``object`` before); the object-dtype variant is timed too, for information, and
so is the frame with every hundredth name missing (a CSV column with gaps) and with a column of periods.
"""

from __future__ import annotations

import joblib
import numpy as np
import pandas as pd

import nbcache
from _timing import best_of, goal, header, show, temp_cache

ROWS = 1_000_000


def make_frame(rows: int) -> pd.DataFrame:
    """Eight random int64 columns and one column of strings like ``item-123456``."""
    rng = np.random.default_rng(0)
    data = {f"i{k}": rng.integers(0, 1 << 40, rows) for k in range(8)}
    data["name"] = [f"item-{i}" for i in rng.integers(0, 1 << 30, rows).tolist()]
    return pd.DataFrame(data)


def compare(label: str, df: pd.DataFrame, target: float | None) -> None:
    """Time both hashers on ``df`` and print the speed-up (against its goal, if ``target`` is given)."""
    t_nb = best_of(lambda: nbcache.hash_value(df), repeat=5)
    t_jl = best_of(lambda: joblib.hash(df), repeat=3)
    show(f"nbcache.hash_value [{label}]", t_nb)
    show(f"joblib.hash        [{label}]", t_jl)
    if target is None:
        print(f"   {'speed-up (information only)':<34} {t_jl / t_nb:10.2f}x")
    else:
        goal("nbcache speed-up over joblib", t_jl / t_nb, ">=", target)


def main() -> None:
    header("hash_dataframe", f"hash a DataFrame of {ROWS:,} rows x 9 columns (8 int64 + 1 string)")
    df = make_frame(ROWS)
    default = str(df["name"].dtype)
    with temp_cache():
        compare(f"name: {default}", df, 30.0)
        if default != "object":
            compare("name: object", df.astype({"name": object}), None)
        gaps = df.copy()
        gaps.loc[::100, "name"] = None
        compare("1% missing", gaps, None)
        periods = df.assign(day=pd.period_range("2000-01-01", periods=ROWS, freq="D"))
        t_nb = best_of(lambda: nbcache.hash_value(periods), repeat=3)
        show("nbcache.hash_value [+ periods]", t_nb)


if __name__ == "__main__":
    main()
