"""MIDAS geometry -> pyFAI geometry, for the pyFAI cross-check tests (docs/MIDAS-FORMATS.md section 2).

MIDAS: pixel (Y = column, Z = row), centre at the integer index; y0 = (BCy - Y)*px, z0 = (Z - BCz)*px;
(X, Y, Z) = (Lsd, 0, 0) + Rx(tx) Ry(ty) Rz(tz) (0, y0, z0); Rad = Lsd*sqrt(Y^2+Z^2)/X; 2theta = atan(Rad/Lsd).
pyFAI: axis 0 = rows (Z), axis 1 = columns (Y), pixel centres at index + 0.5; PONI and dist are the foot and
length of the perpendicular from the sample to the detector plane.

Untilted the conversion is closed-form (dist = Lsd, poni1 = (BCz + 0.5)*px, poni2 = (BCy + 0.5)*px). Tilted,
MIDAS's BC is where the beam meets the detector and Lsd is measured along the beam, so we least-squares fit
pyFAI's six parameters to the MIDAS 2theta of a grid of pixels, starting from the untilted values.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def midas_two_theta_deg(
    y: np.ndarray,
    z: np.ndarray,
    *,
    lsd: float,
    px: float,
    bc_y: float,
    bc_z: float,
    tx: float = 0.0,
    ty: float = 0.0,
    tz: float = 0.0,
) -> np.ndarray:
    """Independent restatement of docs/MIDAS-FORMATS.md section 2 (no distortion, no parallax): 2theta in degrees.

    ``y``, ``z``: transformed-frame pixel coordinates (centres at integer indices); lengths in um, angles in deg.
    """
    y0 = (bc_y - np.asarray(y, dtype=np.float64)) * px
    z0 = (np.asarray(z, dtype=np.float64) - bc_z) * px
    a, b, c = np.deg2rad([tx, ty, tz])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    t = rx @ ry @ rz
    vx = t[0, 1] * y0 + t[0, 2] * z0
    vy = t[1, 1] * y0 + t[1, 2] * z0
    vz = t[2, 1] * y0 + t[2, 2] * z0
    big_x = lsd + vx
    rad = lsd * np.hypot(vy, vz) / big_x
    return np.rad2deg(np.arctan(rad / lsd))


def untilted_poni(*, lsd: float, px: float, bc_y: float, bc_z: float) -> dict[str, float]:
    """Closed-form pyFAI geometry (SI units, radians) of an untilted MIDAS detector."""
    return {
        "dist": lsd * 1e-6,
        "poni1": (bc_z + 0.5) * px * 1e-6,
        "poni2": (bc_y + 0.5) * px * 1e-6,
        "rot1": 0.0,
        "rot2": 0.0,
        "rot3": 0.0,
    }


def pyfai_two_theta_deg(ai, shape: tuple[int, int]) -> np.ndarray:
    """pyFAI 2theta (deg, float64) at every pixel centre of ``shape`` (axis 0 = Z rows, axis 1 = Y columns)."""
    zz, yy = np.indices(shape, dtype=np.float64)
    return np.rad2deg(ai.tth(zz, yy, path="numpy"))


def make_integrator(
    geometry: dict[str, float], *, px: float, shape: tuple[int, int], wavelength_A: float | None
):
    """A pyFAI AzimuthalIntegrator for ``geometry`` (as from :func:`untilted_poni`), square pixels of ``px`` um."""
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    det = Detector(pixel1=px * 1e-6, pixel2=px * 1e-6, max_shape=shape)
    ai = AzimuthalIntegrator(detector=det, **geometry)
    if wavelength_A:
        ai.wavelength = wavelength_A * 1e-10
    return ai


_KEYS = ("dist", "poni1", "poni2", "rot1", "rot2", "rot3")


def fit_pyfai_geometry(
    midas_tth_deg: Callable[[np.ndarray, np.ndarray], np.ndarray],
    start: dict[str, float],
    *,
    px: float,
    shape: tuple[int, int],
    step: int = 8,
) -> tuple[dict[str, float], float]:
    """Fit pyFAI's (dist, poni1, poni2, rot1, rot2) to MIDAS 2theta on a pixel grid (rot3 kept from ``start``).

    ``midas_tth_deg(y, z)``: MIDAS 2theta (deg) at transformed-frame pixel centres (integer indices).
    Returns the fitted geometry and the largest |2theta difference| (deg) on the fitting grid.
    """
    from scipy.optimize import least_squares

    nz, ny = shape
    zz, yy = np.meshgrid(
        np.arange(0, nz, step, dtype=np.float64), np.arange(0, ny, step, dtype=np.float64), indexing="ij"
    )
    zz = np.append(zz.ravel(), nz - 1.0)
    yy = np.append(yy.ravel(), ny - 1.0)
    target = np.deg2rad(midas_tth_deg(yy, zz))
    ai = make_integrator(start, px=px, shape=shape, wavelength_A=None)
    # rot3 (about the beam) and MIDAS tx (about the beam, applied last) leave 2theta unchanged: keep rot3 fixed
    scale = np.array([1e-3, 1e-4, 1e-4, 1e-3, 1e-3])  # well-conditioned parameter steps
    x0 = np.array([start[k] for k in _KEYS])

    def full(x: np.ndarray) -> np.ndarray:
        return x0 + np.append(x * scale, 0.0)

    def tth(x: np.ndarray) -> np.ndarray:
        # pyFAI pixel indices (d1 = row = Z, d2 = column = Y); pyFAI puts the centre of index i at (i + 0.5)*pixel
        return ai.tth(zz, yy, param=full(x), path="numpy")

    def resid(x: np.ndarray) -> np.ndarray:
        return (tth(x) - target) * 1e6  # microradians

    sol = least_squares(resid, np.zeros(5), xtol=1e-15, ftol=1e-15, gtol=1e-15, method="lm")
    best = dict(zip(_KEYS, full(sol.x).tolist(), strict=True))
    return best, float(np.max(np.abs(np.rad2deg(tth(sol.x) - target))))


def midas_r_unit(*, lsd: float, px: float):
    """A pyFAI radial unit equal to MIDAS corrected R in px (no distortion): R = (Lsd/px)*tan(2theta).

    MIDAS R is a function of 2theta alone at any tilt (Rad = Lsd*sqrt(Y^2+Z^2)/X = Lsd*tan 2theta), so pyFAI bins
    uniform in this unit are exactly ringstream's R bins. pyFAI's built-in r_mm is sqrt(x^2+y^2) in the lab frame,
    which is not a function of 2theta once the detector is tilted.
    """
    from pyFAI.units import Unit

    def tan_2th(x, y, z=None, wavelength=None):
        return np.sqrt(x * x + y * y) / z

    return Unit(
        name="midasR_px",
        scale=lsd / px,
        label="MIDAS R (px)",
        equation=tan_2th,
        formula="sqrt(x * x + y * y) / z",
        short_name="R",
        unit_symbol="px",
    )
