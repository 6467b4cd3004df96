"""The cube writer: cubes written on one thread beside the model work, every write finished (or its error
raised) by `close`."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from intro.runtime.store import cube


def _dataset(value: float) -> xr.Dataset:
    return xr.Dataset({"estimate": (("point",), np.array([value]))}, coords={"point": ["p"]})


def test_close_waits_for_every_write_and_the_last_write_of_a_group_wins(tmp_path):
    store = tmp_path / "cube.zarr"
    writer = cube.CubeWriter()
    for value in (1.0, 2.0, 3.0):
        writer.write(_dataset(value), store, "rates")
    writer.write(_dataset(9.0), store, "other")
    writer.close()
    assert cube.open_group(store, "rates")["estimate"].values.tolist() == [3.0]
    assert cube.open_group(store, "other")["estimate"].values.tolist() == [9.0]
    cube.check_store(store)  # the manifest lists both groups as written


def test_a_failed_write_is_raised_by_close(tmp_path):
    blocked = tmp_path / "cube.zarr"
    blocked.write_text("a file where the store should be")
    writer = cube.CubeWriter()
    writer.write(_dataset(1.0), blocked, "rates")
    with pytest.raises(OSError):
        writer.close()
