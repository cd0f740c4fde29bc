"""The kinds of frame source, by the name ``[source] kind`` takes.

The configuration checks ``[source] kind`` against :data:`SOURCE_KINDS`, and the ingest's registry
(:mod:`ringstream.ingest.sources`) makes a source of each of them; a test checks that the two agree. This module sits
below both, so the configuration needs nothing from the ingest process.
"""

SOURCE_KINDS = ("simulated", "replay", "folder", "pva", "midas_socket", "dectris")
