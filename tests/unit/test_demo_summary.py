"""``make demo`` prints the bytes written per frame beside frames/s (issue 16 item 5)."""

from __future__ import annotations

from ringstream.daemon.demo import bytes_per_frame


def test_bytes_per_frame_is_every_output_file_over_the_frames(tmp_path):
    h5, zz = tmp_path / "pilatus2m.h5", tmp_path / "pilatus2m.zarr.zip"
    h5.write_bytes(b"x" * 30_000)
    zz.write_bytes(b"y" * 10_000)
    assert bytes_per_frame([h5, zz], 10) == ("4.0 kB written per frame (pilatus2m.h5 3.0, pilatus2m.zarr.zip 1.0)")
    assert bytes_per_frame([h5], 0) == "no frame written"
