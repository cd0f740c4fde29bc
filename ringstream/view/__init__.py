"""``ringstream view``: the live web page of a running daemon or of an HDF5 results file (docs/VIEW.md).

Modules: :mod:`.state` what the page shows, shared by every browser session; :mod:`.feeds` where it comes from (the
writer's view socket and the control socket of a daemon, or a file); :mod:`.page` the Bokeh document of one
session; :mod:`.server` the Bokeh server and its token; :mod:`.cli` the sub-command.
"""
