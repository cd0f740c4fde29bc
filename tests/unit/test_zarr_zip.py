"""The zarr.zip members ringstream writes itself are byte for byte what zarr 3 writes for the same arrays."""

from __future__ import annotations

import zipfile

import numpy as np
import zarr
from zarr.storage import LocalStore

from ringstream.writer.omega import OmegaGroup
from ringstream.writer.zarr_zip import ZarrZipSink, group_attrs


def test_group_members_equal_what_zarr_writes(tmp_path):
    rng = np.random.default_rng(0)
    remap = rng.random((5, 6, 4))
    groups = [OmegaGroup(g, rng.random((6, 4)), 3, 3 * g, 3 * g + 2, 0.5 * g, 0.5 * g + 1.0) for g in range(3)]
    groups[2].sum[0, 0] = 0.0
    sink = ZarrZipSink(tmp_path / "a.zarr.zip", remap, {"Lam": 0.2, "Distance": 1e6}, 4)
    for g in groups:
        sink.add_group(g)
    sink.close()
    # the same arrays through zarr 3 alone
    root = zarr.open_group(LocalStore(str(tmp_path / "ref")), mode="w", zarr_format=2)
    osf = root.create_group("OmegaSumFrame")
    for g in groups:
        a = osf.create_array(g.name(4), shape=(6, 4), dtype="float64", chunks=(6, 4), compressors=None,
                             fill_value=0.0, attributes=group_attrs(g), config={"write_empty_chunks": True})
        a[...] = g.sum
    with zipfile.ZipFile(tmp_path / "a.zarr.zip") as z:
        for g in groups:
            for member in (".zarray", ".zattrs", "0.0"):
                name = f"OmegaSumFrame/{g.name(4)}/{member}"
                assert z.read(name) == (tmp_path / "ref" / name).read_bytes(), name
        assert [n for n in z.namelist() if n.startswith("OmegaSumFrame/") and n.endswith("/.zarray")] == [
            f"OmegaSumFrame/LastFrameNumber_{k:04d}/.zarray" for k in (2, 5, 8)]
