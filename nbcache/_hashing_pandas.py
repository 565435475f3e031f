"""pandas handlers for ``hash_value``: column by column, vectorised, never through pickle.

A DataFrame hashes as its column labels and their order, its index, and each column's dtype and values;
a Series adds its name. Numeric columns are numpy buffers fed straight to xxh3; string columns take the
one-join fast path of ``_hashing_numpy``; nullable and datetime arrays hash their values and missing mask.

Other pandas objects (a groupby, a resampler, a CSV reader) go through the pickle fallback, less what is
no content: the ``_cache`` where ``cache_readonly`` keeps what it computes the first time the object is read
(a groupby's groups and codes fill it on its first aggregation, which changed its hash), and a CSV reader's
``_engine``, the parser itself: a reader hashes as its source, options and the rows it has yielded, so one
whose file is closed (read to the end, or closed) hashes, while one reading a file still open does not.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._hashing_numpy import feed_array_data, feed_joined, feed_ndarray, joined_strings
from .hash_core import Handler, Hasher, Unhashable, Walk, feed, feed_bytes_tagged, pack_len

_MASKED = (pd.arrays.IntegerArray, pd.arrays.FloatingArray, pd.arrays.BooleanArray)
# pandas 2.1 renamed PandasArray, the array of plain numpy values behind a Series of them
_NUMPY_ARRAY = getattr(pd.arrays, "NumpyExtensionArray", None) or getattr(pd.arrays, "PandasArray")


def feed_values(values, h: Hasher, walk: Walk) -> None:
    """Feed a column's values, whatever array type backs it, tagged with its dtype."""
    feed_bytes_tagged(b"pv", str(values.dtype).encode(), h)
    h.update(pack_len(len(values)))
    if isinstance(values, np.ndarray):
        feed_array_data(values, h, walk)
    elif isinstance(values, pd.Categorical):
        feed_categorical(values, h, walk)
    elif isinstance(values, (pd.arrays.DatetimeArray, pd.arrays.TimedeltaArray)):
        feed_array_data(values.asi8, h, walk)
    elif isinstance(values, _NUMPY_ARRAY):
        _feed_numpy_backed(values, h, walk)
    elif isinstance(values, pd.arrays.PeriodArray):  # (its dtype, fed above, holds the frequency)
        feed_array_data(values.asi8, h, walk)
    elif isinstance(values, pd.arrays.IntervalArray):  # (its dtype, fed above, holds the side that is closed)
        feed_array_data(np.asarray(values.isna()), h, walk)
        feed_values(values.left.array, h, walk)
        feed_values(values.right.array, h, walk)
    elif isinstance(values, _MASKED):
        mask = np.asarray(values.isna())
        feed_array_data(mask, h, walk)
        filler = False if values.dtype.kind == "b" else 0
        feed_array_data(values.to_numpy(dtype=values.dtype.numpy_dtype, na_value=filler), h, walk)
    elif isinstance(values.dtype, pd.StringDtype):
        strings = values.to_numpy(dtype=object)
        joined = joined_strings(strings)  # (every item a str: none is missing, and isna() need not look)
        if joined is not None:
            feed_array_data(np.zeros(len(values), dtype=bool), h, walk)
            feed_joined(joined, strings.size, h)
            return
        mask = np.asarray(values.isna())
        feed_array_data(mask, h, walk)
        feed_array_data(strings[~mask] if mask.any() else strings, h, walk)
    else:
        feed_array_data(np.asarray(values, dtype=object), h, walk)


def _feed_numpy_backed(values, h: Hasher, walk: Walk) -> None:
    """A column of plain numpy values. pandas' own strings with some missing (a text column of a CSV with
    gaps) are fed as their mask and the others: one item at a time, a million took 0.4 s."""
    items = values.to_numpy()
    if isinstance(values.dtype, pd.StringDtype) and items.ndim == 1 and items.dtype.kind == "O":
        joined = joined_strings(items)
        if joined is not None:  # (none missing: as feed_array_data feeds them)
            feed_joined(joined, items.size, h)
            return
        mask = np.asarray(values.isna())
        if mask.any():
            h.update(b"pystrna")
            feed_array_data(mask, h, walk)
            feed_array_data(items[~mask], h, walk)
            return
    feed_array_data(items, h, walk)  # (text holding NUL: one item at a time, as ever)


def feed_categorical(cat: pd.Categorical, h: Hasher, walk: Walk) -> None:
    h.update(b"pcat" + (b"o" if cat.ordered else b"u"))
    feed_index(cat.categories, h, walk)
    feed_ndarray(cat.codes, h, walk)


def feed_index(index: pd.Index, h: Hasher, walk: Walk) -> None:
    feed_bytes_tagged(b"pidx", type(index).__name__.encode(), h)
    feed(list(index.names), h, walk)
    if isinstance(index, pd.RangeIndex):
        feed((index.start, index.stop, index.step), h, walk)
    elif isinstance(index, pd.MultiIndex):
        for level, codes in zip(index.levels, index.codes):
            feed_index(level, h, walk)
            feed_ndarray(np.asarray(codes), h, walk)
    else:
        if isinstance(index, (pd.DatetimeIndex, pd.TimedeltaIndex)):  # its frequency changes what
            feed(index.freqstr, h, walk)  # shift() and resample() do: a DatetimeIndex with freq="D" is not one without
        feed_values(index.array, h, walk)


def feed_series(series: pd.Series, h: Hasher, walk: Walk) -> None:
    h.update(b"pser")
    _feed_beside(series, pd.Series, h, walk)
    feed(series.name, h, walk)
    feed_index(series.index, h, walk)
    feed_values(series.array, h, walk)


def feed_frame(frame: pd.DataFrame, h: Hasher, walk: Walk) -> None:
    h.update(b"pdf")
    _feed_beside(frame, pd.DataFrame, h, walk)
    feed_index(frame.columns, h, walk)
    feed_index(frame.index, h, walk)
    for position, (label, column) in enumerate(frame.items()):
        try:
            feed_values(column.array, h, walk)
        except Unhashable as e:
            raise e.at(f"[{label!r}]" if frame.columns.is_unique else f".iloc[:, {position}]") from None


def _feed_beside(obj: pd.Series | pd.DataFrame, base: type, h: Hasher, walk: Walk) -> None:
    """What a Series or DataFrame carries beside its data, which code reading it may depend on: a subclass's
    type and its ``_metadata`` attributes (a GeoDataFrame's CRS), ``attrs``, and whether duplicate labels are
    refused. Fed only when present: a plain one with none hashes as it always did."""
    if type(obj) is not base:
        h.update(b"psub")
        feed(type(obj), h, walk)
        feed({name: getattr(obj, name, None) for name in getattr(obj, "_metadata", ())}, h, walk)
    if obj.attrs:
        h.update(b"pattrs")
        feed(dict(obj.attrs), h, walk)
    if not obj.flags.allows_duplicate_labels:
        h.update(b"pnodup")


HANDLERS: dict[type, Handler] = {
    pd.DataFrame: feed_frame,
    pd.Series: feed_series,
    pd.Index: feed_index,
    pd.Categorical: feed_categorical,
    pd.api.extensions.ExtensionArray: feed_values,
}
SKIPPED_ATTRIBUTES = frozenset({"_cache", "_engine"})
