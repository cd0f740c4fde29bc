"""Detector geometry: transformed-frame pixel coordinates -> corrected radius R (px) and azimuth η (deg).

The equations are MIDAS's (docs/MIDAS-FORMATS.md section 2), for a pixel at (Y = column, Z = row) of the
transformed frame, pixel centres at integer indices:

    y0 = (Ycen - Y)·px,  z0 = (Z - Zcen)·px                                   (µm; note the sign of y0)
    (vx, vy, vz) = Rx(tx)·Ry(ty)·Rz(tz)·(0, y0, z0);  X = Lsd + vx, Y' = vy, Z' = vz
    Rad = Lsd·sqrt(Y'² + Z'²)/X;  η = atan2(-Y', Z')  in (-180°, 180°]
    ρ = Rad/RhoD, ψ = 90° - η
    D = p0ρ²cos(2ψ+p6) + p1ρ⁴cos(4ψ+p3) + p2ρ² + p4ρ⁶ + p5ρ⁴ + p7ρ⁴cos(ψ+p8) + p9ρ³cos(3ψ+p10)
        + p11ρ⁵cos(5ψ+p12) + p13ρ⁶cos(6ψ+p14)                                  (phases in degrees)
    R = Rad·(1 + D)/px + Parallax·sin(2θ)/px,  with 2θ = atan(Rad·(1 + D)/Lsd)

Corrected-plane Cartesian coordinates (px): x = -R sin η, y = R cos η, so η = atan2(-x, y).

A ``DistortionFile`` holds float64 ΔY then ΔZ maps (px, raw frame, NrPixelsZ×NrPixelsY each); the displacement of a
raw pixel is carried to the transformed frame as a vector (:func:`~.transforms.transform_vectors`) and moves the
pixel's centre and all four of its corners.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from .transforms import apply_transforms, raw_index_map, transform_vectors, transformed_shape


def rotation_matrix(tx: float, ty: float, tz: float) -> np.ndarray:
    """T = Rx(tx)·Ry(ty)·Rz(tz) (angles in degrees), float64 [3, 3]."""
    a, b, c = np.radians([tx, ty, tz])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


def polarization(two_theta: np.ndarray, eta: np.ndarray, f: float, angle: float = 0.0) -> np.ndarray:
    """Polarization factor P = 1 - f·sin²(2θ)·cos²(η - angle); 2θ, η and angle in degrees.

    ``angle`` is the η of the beam's polarization direction (its electric field), η = 0 toward +Z and η = 90° toward
    -Y; P = 0 for f = 1 at 2θ = 90° in that direction. ``angle = 0`` is MIDAS's form 1 - f·sin²(2θ)·cos²(η), right
    for a beam polarized along Z; a synchrotron's horizontal polarization with Z vertical is ``angle = 90``.
    docs/POLARIZATION.md relates this to pyFAI's ``polarization_factor`` and ``axis_offset``.
    """
    s = np.sin(np.radians(two_theta))
    c = np.cos(np.radians(eta - angle))
    return 1.0 - f * s * s * c * c


def load_distortion_file(path: Path, nz: int, ny: int) -> tuple[np.ndarray, np.ndarray]:
    """Read a MIDAS DistortionFile: float64 ΔY map then ΔZ map, each ``[nz, ny]`` in the raw frame (px)."""
    path = Path(path)
    expected = 2 * nz * ny * 8
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read DistortionFile ({exc.strerror or exc})") from exc
    if len(raw) != expected:
        raise InputError(
            f"{path}: DistortionFile has {len(raw)} bytes; expected {expected} bytes "
            f"(float64 ΔY then ΔZ maps of NrPixelsZ×NrPixelsY = {nz}×{ny})"
        )
    arr = np.frombuffer(raw, dtype="<f8").astype(np.float64).reshape(2, nz, ny)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{path}: DistortionFile holds NaN or infinite displacements")
    return arr[0].copy(), arr[1].copy()


@dataclass(frozen=True, eq=False)
class DetectorGeometry:
    """Everything needed to map transformed-frame pixel coordinates to (R px, η deg), 2θ and Q.

    Lengths in µm (``lsd``, ``px``, ``rhod``, ``parallax``), angles in degrees, ``bc`` = (Ycen, Zcen) in px of the
    transformed frame, ``shape`` = raw (NrPixelsZ, NrPixelsY). ``dy``/``dz``: the raw-frame DistortionFile maps
    (px) or None.
    """

    lsd: float
    bc: tuple[float, float]
    tilts: tuple[float, float, float]
    px: float
    shape: tuple[int, int]
    wavelength: float = 0.0
    rhod: float = 200000.0
    p: tuple[float, ...] = (0.0,) * 15
    parallax: float = 0.0
    im_trans: tuple[int, ...] = ()
    dy: np.ndarray | None = None
    dz: np.ndarray | None = None
    distortion_file: Path | None = None
    rot: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rot", rotation_matrix(*self.tilts))
        object.__setattr__(self, "p", tuple(float(v) for v in self.p) + (0.0,) * (15 - len(self.p)))
        transformed_shape(self.shape[0], self.shape[1], self.im_trans)  # validates ImTransOpt

    @classmethod
    def from_params(cls, p) -> DetectorGeometry:
        """Build from a :class:`~ringstream.params.Params`; loads ``DistortionFile`` (InputError on a bad size)."""
        nz, ny = int(p.NrPixelsZ), int(p.NrPixelsY)
        dy = dz = None
        dfile = getattr(p, "DistortionFile", None)
        if dfile:
            dy, dz = load_distortion_file(Path(dfile), nz, ny)
        return cls(
            lsd=float(p.Lsd),
            bc=(float(p.BC[0]), float(p.BC[1])),
            tilts=(float(p.tx), float(p.ty), float(p.tz)),
            px=float(p.px),
            shape=(nz, ny),
            wavelength=float(p.Wavelength or 0.0),
            rhod=float(p.RhoD),
            p=tuple(p.p),
            parallax=float(getattr(p, "Parallax", 0.0) or 0.0),
            im_trans=tuple(int(o) for o in (p.ImTransOpt or ())),
            dy=dy,
            dz=dz,
            distortion_file=Path(dfile) if dfile else None,
        )

    # ------------------------------------------------------------------ point maps

    def _lab(self, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Lab coordinates (X, Y, Z) in µm of transformed-frame points (y, z) in px."""
        t = self.rot
        y0 = (self.bc[0] - y) * self.px
        z0 = (z - self.bc[1]) * self.px
        xl = self.lsd + (t[0, 1] * y0 + t[0, 2] * z0)
        yl = t[1, 1] * y0 + t[1, 2] * z0
        zl = t[2, 1] * y0 + t[2, 2] * z0
        return xl, yl, zl

    def _distortion(self, rad: np.ndarray, eta: np.ndarray) -> np.ndarray | float:
        """The 15-term D(ρ, ψ) of docs/MIDAS-FORMATS.md section 2 (0.0 when every coefficient is 0)."""
        p = self.p
        if not any(p[i] for i in (0, 1, 2, 4, 5, 7, 9, 11, 13)):
            return 0.0
        rho = rad / self.rhod
        rho2 = rho * rho
        rho3 = rho2 * rho
        rho4 = rho2 * rho2
        rho5 = rho4 * rho
        rho6 = rho3 * rho3
        psi = np.radians(90.0 - eta)
        d = p[2] * rho2 + p[4] * rho6 + p[5] * rho4

        def ang(k: int, phase: float) -> np.ndarray:
            return np.cos(k * psi + np.radians(phase))

        if p[0]:
            d = d + p[0] * rho2 * ang(2, p[6])
        if p[1]:
            d = d + p[1] * rho4 * ang(4, p[3])
        if p[7]:
            d = d + p[7] * rho4 * ang(1, p[8])
        if p[9]:
            d = d + p[9] * rho3 * ang(3, p[10])
        if p[11]:
            d = d + p[11] * rho5 * ang(5, p[12])
        if p[13]:
            d = d + p[13] * rho6 * ang(6, p[14])
        return d

    def _r_dir(self, y, z, need_eta: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(R px, -sin η, cos η, η deg or None) of transformed-frame points; η only when asked or needed."""
        y = np.asarray(y, dtype=np.float64)
        z = np.asarray(z, dtype=np.float64)
        xl, yl, zl = self._lab(y, z)
        rho = np.hypot(yl, zl)
        rad = self.lsd * rho / xl
        eta = None
        d = None
        if need_eta or any(self.p[i] for i in (0, 1, 7, 9, 11, 13)):
            eta = np.degrees(np.arctan2(-yl, zl))
            eta = np.where(eta <= -180.0, eta + 360.0, eta)
            d = self._distortion(rad, eta)
        elif self.p[2] or self.p[4] or self.p[5]:
            d = self._distortion(rad, np.zeros(()))  # isotropic terms only: ψ is not used
        rt = rad if d is None else rad * (1.0 + d)
        if self.parallax:
            rt = rt + self.parallax * np.sin(np.arctan(rt / self.lsd))
        # direction of the point around the beam: (-sin η, cos η) = (Y', Z')/|(Y', Z')|; (0, 1) at the centre
        safe = np.where(rho > 0, rho, 1.0)
        msin = np.where(rho > 0, yl / safe, 0.0)
        cos = np.where(rho > 0, zl / safe, 1.0)
        return rt / self.px, msin, cos, eta

    def r_eta(self, y, z) -> tuple[np.ndarray, np.ndarray]:
        """Corrected radius R (px) and η (deg, (-180, 180]) of transformed-frame points (y = column, z = row).

        Array arguments of any (broadcastable) shape; the DistortionFile is *not* applied here (it is a per-pixel
        displacement: see :meth:`pixel_centres` and :meth:`pixel_corners`).
        """
        r, _, _, eta = self._r_dir(y, z, need_eta=True)
        return r, eta

    def two_theta_deg(self, r_px) -> np.ndarray:
        """2θ (deg) of corrected radius R (px): atan(R·px/Lsd)."""
        return np.degrees(np.arctan(np.asarray(r_px, dtype=np.float64) * self.px / self.lsd))

    def q_inv_angstrom(self, r_px) -> np.ndarray:
        """Q (Å⁻¹) = 4π/λ·sin(θ) of corrected radius R (px); NaN when the Wavelength is unknown (0)."""
        tth = np.radians(self.two_theta_deg(r_px))
        if not self.wavelength > 0:
            return np.full_like(tth, np.nan)
        return 4.0 * np.pi / self.wavelength * np.sin(tth / 2.0)

    q = q_inv_angstrom

    def solid_angle(self, y, z) -> np.ndarray:
        """Tilt-aware relative solid angle SA = (n·P/|P|)³ of transformed-frame points (px).

        P is the lab vector of the point, n the detector normal T·(1, 0, 0); n·P = Lsd·T[0, 0] for every point of
        the detector plane. Untilted this is cos³(2θ), MIDAS's flat form.
        """
        xl, yl, zl = self._lab(np.asarray(y, dtype=np.float64), np.asarray(z, dtype=np.float64))
        norm = np.sqrt(xl * xl + yl * yl + zl * zl)
        c = self.lsd * self.rot[0, 0] / norm
        return c * c * c

    # ------------------------------------------------------------------ per-pixel maps

    @property
    def transformed_shape(self) -> tuple[int, int]:
        return transformed_shape(self.shape[0], self.shape[1], self.im_trans)

    def raw_index_map(self) -> np.ndarray:
        """int64 ``T[zt, yt]`` = raw flat index (see :func:`~.transforms.raw_index_map`)."""
        return raw_index_map(self.shape[0], self.shape[1], self.im_trans)

    def _displacements_t(self) -> tuple[np.ndarray, np.ndarray] | None:
        """DistortionFile displacements on the transformed grid, transformed-frame components, [nZt, nYt]."""
        if self.dy is None:
            return None
        dyt = apply_transforms(self.dy, self.im_trans)
        dzt = apply_transforms(self.dz, self.im_trans)
        return transform_vectors(dyt, dzt, self.im_trans)

    def pixel_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Transformed-frame coordinates (y, z) in px of every raw pixel's centre, DistortionFile applied.

        float64 ``[nZ*nY]`` each, indexed by raw flat pixel id.
        """
        nzt, nyt = self.transformed_shape
        zt, yt = np.meshgrid(np.arange(nzt, dtype=np.float64), np.arange(nyt, dtype=np.float64), indexing="ij")
        disp = self._displacements_t()
        if disp is not None:
            yt = yt + disp[0]
            zt = zt + disp[1]
        t = self.raw_index_map().ravel()
        y = np.empty(t.size)
        z = np.empty(t.size)
        y[t] = yt.ravel()
        z[t] = zt.ravel()
        return y, z

    def pixel_corners(self) -> tuple[np.ndarray, np.ndarray]:
        """Corrected-plane corners (cx, cy) in px, float64 ``[nZ*nY, 4]``, indexed by raw flat pixel id.

        Corners are taken in the transformed frame at (yt ± ½, zt ± ½), in order around the pixel:
        (yt-½, zt-½), (yt+½, zt-½), (yt+½, zt+½), (yt-½, zt+½); x = -R sin η, y = R cos η. Without a
        DistortionFile, R and η are computed once on the (nZt+1)×(nYt+1) grid of corner points and gathered; with
        one, each pixel's displacement moves its four corners, so they are computed per pixel.
        """
        nzt, nyt = self.transformed_shape
        disp = self._displacements_t()
        if disp is None:
            # y0 depends on the column only, z0 on the row only: broadcast a row against a column
            yc = (np.arange(nyt + 1, dtype=np.float64) - 0.5)[None, :]
            zc = (np.arange(nzt + 1, dtype=np.float64) - 0.5)[:, None]
            gx, gy = self._plane_xy(yc, zc)
            cxt = np.stack([gx[:-1, :-1], gx[:-1, 1:], gx[1:, 1:], gx[1:, :-1]], axis=-1)
            cyt = np.stack([gy[:-1, :-1], gy[:-1, 1:], gy[1:, 1:], gy[1:, :-1]], axis=-1)
        else:
            zt, yt = np.meshgrid(np.arange(nzt, dtype=np.float64), np.arange(nyt, dtype=np.float64),
                                 indexing="ij")
            yt = (yt + disp[0])[..., None] + np.array([-0.5, 0.5, 0.5, -0.5])
            zt = (zt + disp[1])[..., None] + np.array([-0.5, -0.5, 0.5, 0.5])
            cxt, cyt = self._plane_xy(yt, zt)
        if not any(self.im_trans):
            return cxt.reshape(-1, 4), cyt.reshape(-1, 4)
        t = self.raw_index_map().ravel()
        cx = np.empty((t.size, 4))
        cy = np.empty((t.size, 4))
        cx[t] = cxt.reshape(-1, 4)
        cy[t] = cyt.reshape(-1, 4)
        return cx, cy

    def _plane_xy(self, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Corrected-plane (x, y) = (-R sin η, R cos η) in px of transformed-frame points."""
        r, msin, cos, _ = self._r_dir(y, z, need_eta=False)
        return r * msin, r * cos

    def info(self) -> dict:
        """The geometry that was used, for map and output metadata."""
        return {
            "Lsd": self.lsd, "BC": list(self.bc), "tx": self.tilts[0], "ty": self.tilts[1], "tz": self.tilts[2],
            "px": self.px, "NrPixelsZ": self.shape[0], "NrPixelsY": self.shape[1], "Wavelength": self.wavelength,
            "RhoD": self.rhod, "p": list(self.p), "Parallax": self.parallax, "ImTransOpt": list(self.im_trans),
            "DistortionFile": str(self.distortion_file) if self.distortion_file else None,
        }
