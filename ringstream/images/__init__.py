"""Detector image files: one reader per format (:mod:`.formats`: TIFF, npy, HDF5, GE, CBF, raw) and, on top of them,
image files and folders read frame by frame and dark frames (:mod:`.files`).

Below the process roles: the ingest's folder and replay sources, the workers (dark frames) and the offline
``ringstream integrate`` all read files through it.
"""
