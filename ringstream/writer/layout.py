"""Names in the results file that its writer (:mod:`~ringstream.writer.hdf5`) and its readers (export, repair,
resume) share (docs/OUTPUTS.md)."""

from __future__ import annotations

import h5py

#: the per-frame metadata as JSON text, in /entry/data/metadata (an NXcollection: NXazint1d types every field of
#: the NXdata group itself, and text is not the NX_NUMBER it names for a DATA field)
METADATA_JSON = "metadata_json"

#: the NXentry of the per-frame cakes (Write2D 1), NXazint2d, beside the NXazint1d ``/entry``: NeXus gives an entry
#: one definition, and NXazint2d's NXdata is not NXazint1d's. Its I is ``[nImg, nEta, nR]`` (the definition's
#: order; a cake of the engines is ``[nR, nEta]``); the rest of it is ``/entry``'s, hard-linked.
CAKE_ENTRY = "cake"
#: the cakes, ``[nImg, nEta, nR]``
CAKE_I = f"{CAKE_ENTRY}/data/I"


def cake_rows(f: h5py.File) -> h5py.Dataset | None:
    """The per-frame cakes of the results file ``f``, ``[nImg, nEta, nR]`` (None: written without Write2D)."""
    return f[CAKE_I] if CAKE_I in f else None
