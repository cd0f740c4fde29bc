"""Polarization correction: the plane's angle (PolarizationAngle), an analytic polarized pattern, pyFAI's factor.

P = 1 - f·sin²(2θ)·cos²(η - PolarizationAngle), η = 0 toward +Z (docs/POLARIZATION.md). The map divides each
pixel's contribution by P at the pixel centre, so an image that is a ring pattern times P must integrate to the
cake of the ring pattern itself (the ratio flat in η) when the angle matches, and not when it does not.
"""

from __future__ import annotations

import numpy as np
import pytest

from ringstream.geometry import DetectorGeometry, build_map
from ringstream.geometry.detector import polarization
from ringstream.params import parse_params

pytestmark = pytest.mark.timeout(120)

# short distance for large 2θ (up to ~28° at R = 40 px), a tilted detector, an off-grid centre
PARAMS = """NrPixels 96
Lsd 15000
px 200
BC 47.7 49.2
tx 0.5
ty 2
tz -1.5
RMin 5
RMax 45
RBinSize 1
EtaBinSize 10
PolarizationCorrection 1
PolarizationFraction 0.99
"""


def ring_pattern(two_theta_deg):
    """A broad ring at 2θ = 20° (σ = 2°, ~3 px) on a constant background."""
    return 100.0 + 1000.0 * np.exp(-0.5 * ((two_theta_deg - 20.0) / 2.0) ** 2)


def pixel_tth_eta(p):
    """2θ and η (deg) at every raw pixel centre, [nZ*nY] each."""
    g = DetectorGeometry.from_params(p)
    r, eta = g.r_eta(*g.pixel_centres())
    return g.two_theta_deg(r), eta


def cake(imap, image):
    s = (imap.weights @ np.ravel(image)).reshape(imap.n_r, imap.n_eta)
    return s / imap.bin_area


def eta_spread(c):
    """Peak-to-peak variation over η of each radial bin of a cake, relative to its mean."""
    return (c.max(axis=1) - c.min(axis=1)) / c.mean(axis=1)


def test_default_is_midas_form():
    p = parse_params(PARAMS)
    assert p.PolarizationAngle == 0.0
    tth = np.linspace(0.0, 60.0, 13)[:, None]
    eta = np.linspace(-180.0, 180.0, 25)[None, :]
    s, c = np.sin(np.radians(tth)), np.cos(np.radians(eta))
    assert np.array_equal(polarization(tth, eta, 0.9), 1.0 - 0.9 * s * s * c * c)  # the values MIDAS's form gave
    s2 = s * s
    np.testing.assert_allclose(polarization(tth, eta, 0.9, 90.0), 1.0 - 0.9 * s2 * np.sin(np.radians(eta)) ** 2,
                               rtol=0, atol=1e-15)
    # the plane's angle is defined modulo 180°
    np.testing.assert_allclose(polarization(tth, eta, 0.9, -150.0), polarization(tth, eta, 0.9, 30.0),
                               rtol=0, atol=1e-15)


@pytest.mark.parametrize("angle", [0.0, 90.0, 35.0])
def test_polarized_rings_come_out_flat_in_eta_for_the_matching_angle(angle):
    p = parse_params(PARAMS + f"PolarizationAngle {angle}\n")
    tth, eta = pixel_tth_eta(p)
    factor = polarization(tth, eta, p.PolarizationFraction, angle)
    right = build_map(p)
    wrong = build_map(p.replace(PolarizationAngle=angle - 90.0))
    unpolarized = build_map(p.replace(PolarizationCorrection=False))
    full = right.r_edges[1:] <= 40.0  # radial bins inside the detector all around
    sin2 = np.sin(np.radians(right.two_theta[full])) ** 2

    # a uniform scatterer seen through the polarization: flat cakes, to rounding
    assert eta_spread(cake(right, factor)[full]).max() < 1e-12
    assert np.all(eta_spread(cake(wrong, factor)[full]) > sin2)

    # the ring pattern: the correction undoes P pixel by pixel, so the cake is the unpolarized pattern's cake and
    # the ratio of the two is flat in η; the wrong plane leaves a modulation of ~2·f·sin²2θ peak to peak
    truth = cake(unpolarized, ring_pattern(tth))[full]
    image = ring_pattern(tth) * factor
    ratio = cake(right, image)[full] / truth
    assert np.max(np.abs(ratio - 1.0)) < 1e-12
    ratio_wrong = cake(wrong, image)[full] / truth
    assert np.all(eta_spread(ratio_wrong) > sin2)
    assert eta_spread(ratio_wrong).max() > 0.3


# ------------------------------------------------------------------ pyFAI's polarization factor
N = 128
PX = 200.0
LSD = 5.0e4  # um: 2θ up to ~21° in the corners
BC_Y, BC_Z = 60.3, 70.7


@pytest.mark.parametrize("tilts", [(0.0, 0.0, 0.0), (5.0, 2.5, -2.0)], ids=["untilted", "tilted"])
def test_matches_pyfai_polarization_factor(tilts):
    """ours = pyFAI(factor f, axis_offset = angle - 90°) + (1 - f)/2·sin²2θ, per pixel.

    pyFAI's factor, ½(1 + cos²2θ - f·cos(2(χ + offset))·sin²2θ), keeps an unpolarized share (1 - f) of the beam;
    MIDAS's form drops that η-independent term. pyFAI's χ is 90° - η here (χ = 0 along the columns, 90° along
    the rows), so the η-dependent parts agree for offset = angle - 90° (mod 180°).
    """
    pytest.importorskip("pyFAI")
    from pyfai_geometry import fit_pyfai_geometry, make_integrator, midas_two_theta_deg, untilted_poni

    tx, ty, tz = tilts
    geometry = untilted_poni(lsd=LSD, px=PX, bc_y=BC_Y, bc_z=BC_Z)
    geometry["rot3"] = np.radians(tx)  # MIDAS tx turns η by -tx, pyFAI rot3 turns χ by +rot3
    if any(tilts):
        geometry, err = fit_pyfai_geometry(
            lambda y, z: midas_two_theta_deg(y, z, lsd=LSD, px=PX, bc_y=BC_Y, bc_z=BC_Z, tx=tx, ty=ty, tz=tz),
            geometry, px=PX, shape=(N, N))
        assert err < 1e-6
    ai = make_integrator(geometry, px=PX, shape=(N, N), wavelength_A=None)

    g = DetectorGeometry(lsd=LSD, bc=(BC_Y, BC_Z), tilts=tilts, px=PX, shape=(N, N))
    z, y = np.indices((N, N), dtype=np.float64)
    r, eta = g.r_eta(y.ravel(), z.ravel())
    tth = g.two_theta_deg(r)
    sin2 = np.sin(np.radians(tth)) ** 2
    for angle in (0.0, 90.0, 30.0, -60.0):
        for f in (1.0, 0.99, 0.5):
            ours = polarization(tth, eta, f, angle)
            theirs = ai.polarization((N, N), factor=f, axis_offset=np.radians(angle - 90.0), path="numpy")
            theirs = np.asarray(theirs, dtype=np.float64).ravel()
            # pyFAI returns float32
            np.testing.assert_allclose(ours, theirs + 0.5 * (1.0 - f) * sin2, rtol=0, atol=2e-7)
        # the same angle with the opposite offset convention would not match
        wrong = np.asarray(ai.polarization((N, N), factor=1.0, axis_offset=np.radians(angle), path="numpy"))
        assert np.max(np.abs(polarization(tth, eta, 1.0, angle) - wrong.ravel())) > 0.05
