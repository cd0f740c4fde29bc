"""How precisely any fit can recover TCH peak parameters from Poisson counts: the Cramér–Rao bound, by peak SNR.

Issue 22 asks for sig and gam within 3 % and area within 1 % at peak SNR >= 100. This computes, for the synthetic
cases of the tests (``ringstream.fitting.synthetic.make_tch_case``: 6–10 bins of 0.01° across the FWHM, sig 1–11.5
centideg², Γ_L = 0.3–1.5 Γ_G, background 50–500 counts, SNR = height / sqrt(height + background) at the top), the
standard deviation of each parameter

- of the unweighted least-squares fit that ringstream and MIDAS run (sandwich covariance
  ``(JᵀJ)⁻¹ Jᵀ diag(f) J (JᵀJ)⁻¹``, f the expected counts), and
- of the best unbiased estimator there is, the Poisson Cramér–Rao bound ``(Jᵀ diag(1/f) J)⁻¹`` (what a
  Poisson-weighted fit approaches),

from the model's analytic Jacobian at the truth: no fitting, no random error in the figures beyond the draw of the
cases. A tolerance a few times below the bound cannot be met by any fitter on such data.

    python bench/tch_precision_bound.py [--cases 200] [--snr 100,300,1000,2000] [--dx 0.01] [--machine vm]

Writes ``bench/results/tch_precision_bound-<machine>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from ringstream.fitting import tch
from ringstream.fitting.synthetic import make_tch_case

HERE = Path(__file__).resolve().parent
#: parameter index in a one-peak vector [b0, b1, area, centre, sig, gam] and how it is reported
PARAMS = {"area": (2, "rel"), "centre_deg": (3, "abs"), "sig": (4, "rel"), "gam": (5, "rel")}


def sigmas(case) -> dict[str, dict[str, float]]:
    """Standard deviations of the parameters of one case over its ROI: unweighted LS and the Poisson bound."""
    x, p = case.x, case.truth
    sel = (x >= case.xmid - case.hw) & (x <= case.xmid + case.hw)
    f, jac = tch.model_jacobian(x[sel][None], p[None], np.array([case.xmid]), np.array([case.hw]))
    f, jac = f[0], jac[0]
    a_inv = np.linalg.inv(jac.T @ jac)
    cov = {"unweighted_ls": a_inv @ (jac.T * f) @ jac @ a_inv, "poisson_bound": np.linalg.inv((jac.T / f) @ jac)}
    out = {}
    for how, c in cov.items():
        out[how] = {name: float(np.sqrt(c[k, k]) / (abs(p[k]) if kind == "rel" else 1.0))
                    for name, (k, kind) in PARAMS.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--snr", default="100,300,1000,2000")
    ap.add_argument("--dx", type=float, default=0.01, help="bin width, deg 2θ (the tests' 0.01)")
    ap.add_argument("--machine", default="vm")
    args = ap.parse_args()
    rows = []
    print(f"{'SNR':>6} {'fit':>14} | {'sig med':>8} {'sig p95':>8} | {'gam med':>8} {'gam p95':>8} | "
          f"{'area med':>8} {'area p95':>8} | {'centre med':>10} (deg)")
    for snr in (float(s) for s in args.snr.split(",")):
        rng = np.random.default_rng(22)
        all_s = [sigmas(make_tch_case(rng, "single", snr=snr, dx=args.dx)) for _ in range(args.cases)]
        for how in ("unweighted_ls", "poisson_bound"):
            row = {"snr": snr, "fit": how, "cases": args.cases, "dx_deg": args.dx}
            for name in PARAMS:
                v = np.array([s[how][name] for s in all_s])
                row[f"{name}_median"] = float(np.median(v))
                row[f"{name}_p95"] = float(np.percentile(v, 95))
            rows.append(row)
            print(f"{snr:6.0f} {how:>14} | {row['sig_median']:8.2%} {row['sig_p95']:8.2%} | "
                  f"{row['gam_median']:8.2%} {row['gam_p95']:8.2%} | {row['area_median']:8.2%} "
                  f"{row['area_p95']:8.2%} | {row['centre_deg_median']:10.2e}")
    result = {"benchmark": "tch_precision_bound",
              "what": "one standard deviation of each TCH parameter over the synthetic cases of the tests: "
                      "unweighted least squares (what is fitted) and the Poisson Cramér–Rao bound (no unbiased "
                      "fit does better); sig, gam and area relative, the centre in degrees",
              "command": "python bench/tch_precision_bound.py " + " ".join(
                  f"--{k} {v}" for k, v in (("cases", args.cases), ("snr", args.snr), ("dx", args.dx))),
              "machine": {"hostname": args.machine, "python": platform.python_version(), "numpy": np.__version__,
                          "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
              "rows": rows}
    path = HERE / "results" / f"tch_precision_bound-{args.machine}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written {path}")


if __name__ == "__main__":
    main()
