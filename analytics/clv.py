"""BG/NBD (Fader, Hardie & Lee 2005, "Counting your customers the easy way") and
Gamma-Gamma (Fader, Hardie & Lee 2005, "RFM and CLV"; Colombo & Jiang 1999) fitted by
maximum likelihood with numpy/scipy.

Inputs per customer: x = repeat purchase days, t_x = time of the last purchase day since
the first, T = time since the first purchase day (any unit: the CDNOW data are in weeks,
the shop's in days), and for Gamma-Gamma the mean spend of the repeat purchase days.
Customers with the same (x, t_x, T) contribute the same likelihood, so the fit takes
weights: a million customers in days collapse to a few hundred thousand distinct rows.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

# scipy.optimize and scipy.special load on first use: imported here, they cost every Django process
# (web, worker, each management command) ~0.4 s at start-up through the admin's analytics.services.
import scipy


@dataclass
class Fit:
    params: dict[str, float]
    log_likelihood: float
    customers: int
    converged: bool
    seconds: float = 0.0
    message: str = ""
    extra: dict = field(default_factory=dict)


def _minimise(objective, start: np.ndarray) -> scipy.optimize.OptimizeResult:
    """Minimise `objective(params) -> (value, gradient)`: BFGS with the analytic gradient from
    the start, which takes a few dozen evaluations where Nelder–Mead takes about a thousand (a
    million customers: seconds instead of minutes). When BFGS does not converge (a flat or
    strange likelihood), Nelder–Mead to get near the optimum from anywhere, then BFGS to
    polish it."""

    def value(params):
        return objective(params)[0]

    quick = scipy.optimize.minimize(
        objective, start, jac=True, method="BFGS", options={"gtol": 1e-9, "maxiter": 500}
    )
    # "Precision loss" at a gradient this small is the optimum within floating point.
    if np.all(np.isfinite(quick.x)) and quick.fun < 1e299 and np.max(np.abs(quick.jac)) < 1e-6:
        return quick
    first = scipy.optimize.minimize(
        value, start, method="Nelder-Mead", options={"maxiter": 4000, "xatol": 1e-8, "fatol": 1e-12}
    )
    polished = scipy.optimize.minimize(
        objective, first.x, jac=True, method="BFGS", options={"gtol": 1e-9, "maxiter": 500}
    )
    best = min(
        (r for r in (quick, first, polished) if np.all(np.isfinite(r.x))), key=lambda r: r.fun, default=first
    )
    return best


# --- BG/NBD ---------------------------------------------------------------------------


def bgnbd_log_likelihood_terms(r, alpha, a, b, x, t_x, T) -> np.ndarray:
    """Each customer's log-likelihood (FHL 2005, equation 6), in a numerically stable form."""
    x = np.asarray(x, dtype=float)
    t_x = np.asarray(t_x, dtype=float)
    T = np.asarray(T, dtype=float)
    common = scipy.special.gammaln(r + x) - scipy.special.gammaln(r) + r * math.log(alpha)
    alive = scipy.special.betaln(a, b + x) - scipy.special.betaln(a, b) - (r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore", invalid="ignore"):
        dropped = np.where(
            x > 0,
            scipy.special.betaln(a + 1, b + np.maximum(x, 1) - 1)
            - scipy.special.betaln(a, b)
            - (r + x) * np.log(alpha + t_x),
            -np.inf,
        )
    return common + np.logaddexp(alive, dropped)


class _BgnbdLikelihood:
    """−log-likelihood per customer and its gradient in (log r, log α, log a, log b), vectorised
    for a million customers: what depends on x alone (Γ, B, ψ functions) is computed once per
    distinct x, the logarithms of α + t once per distinct t_x or T, and sums over customers
    with the same T once (weights per distinct T); what remains per (x, t_x, T) row is a
    dozen array operations into buffers allocated once (a fresh 5 MB array per operation
    costs as much as the operation). The same likelihood as `bgnbd_log_likelihood_terms`."""

    def __init__(self, x, t_x, T, w):
        self.x, self.w = x, w
        self.total = float(w.sum())
        self.ux, xi = np.unique(x, return_inverse=True)
        self.xi = xi.reshape(-1)
        self.wx = np.bincount(self.xi, weights=w, minlength=len(self.ux))
        self.ut, ti = np.unique(np.concatenate([t_x, T]), return_inverse=True)
        ti = ti.reshape(-1)
        self.txi, self.Ti = ti[: len(x)], ti[len(x) :]
        self.w_T = np.bincount(self.Ti, weights=w, minlength=len(self.ut))
        self.wx_T = np.bincount(self.Ti, weights=w * x, minlength=len(self.ut))
        self.repeat = self.ux > 0
        self.buffers = [np.empty_like(x) for _ in range(5)]

    def __call__(self, log_params):
        with np.errstate(all="ignore"):
            r, alpha, a, b = np.exp(log_params)
            if not all(np.isfinite([r, alpha, a, b])) or min(r, alpha, a, b) <= 0:
                return 1e300, np.zeros(4)
            ux, xi, w, W = self.ux, self.xi, self.w, self.total
            LT, d, rx, u, work = self.buffers
            lt = np.log(alpha + self.ut)
            np.take(lt, self.Ti, out=LT)
            np.take(lt, self.txi, out=d)
            d -= LT  # log(α + t_x) − log(α + T)
            np.add(self.x, r, out=rx)
            repeat_b = b + np.maximum(ux, 1) - 1
            drop = np.where(self.repeat, np.log(a) - np.log(repeat_b), -np.inf)
            # u: log-odds of "left right after the last purchase" against "still alive at T".
            np.take(drop, xi, out=u)
            np.multiply(rx, d, out=work)
            u -= work
            # log(1 + e^u) = max(u, 0) + log1p(e^−|u|), without overflow.
            np.abs(u, out=work)
            np.negative(work, out=work)
            np.exp(work, out=work)
            np.log1p(work, out=work)
            work += np.maximum(u, 0.0, out=LT)
            softplus = _dot(w, work)
            common = (
                scipy.special.gammaln(r + ux)
                - scipy.special.gammaln(r)
                + r * math.log(alpha)
                + scipy.special.betaln(a, b + ux)
                - scipy.special.betaln(a, b)
            )
            value = np.dot(self.wx, common) - r * np.dot(self.w_T, lt) - np.dot(self.wx_T, lt) + softplus
            w_pi = scipy.special.expit(u, out=u)  # the posterior weight of "left after the last purchase"
            w_pi *= w
            sum_w_pi = float(w_pi.sum())
            inv = 1.0 / (alpha + self.ut)
            ab = scipy.special.digamma(a + b)
            abx = scipy.special.digamma(a + b + ux)
            d_r = (
                np.dot(self.wx, scipy.special.digamma(r + ux) - scipy.special.digamma(r))
                + W * math.log(alpha)
                - np.dot(self.w_T, lt)
                - _dot(w_pi, d)
            )
            np.take(inv, self.txi, out=d)
            np.take(inv, self.Ti, out=work)
            d -= work
            d *= rx
            d_alpha = W * r / alpha - np.dot(r * self.w_T + self.wx_T, inv) - _dot(w_pi, d)
            d_a = np.dot(self.wx, ab - abx) + sum_w_pi / a
            np.take(np.where(self.repeat, 1 / repeat_b, 0.0), xi, out=work)
            digamma = scipy.special.digamma
            d_b = np.dot(self.wx, digamma(b + ux) - abx - digamma(b) + ab) - _dot(w_pi, work)
            gradient = -np.array([d_r * r, d_alpha * alpha, d_a * a, d_b * b]) / W
            value = -value / W
        if not np.isfinite(value) or not np.all(np.isfinite(gradient)):
            return 1e300, np.zeros(4)
        return value, gradient


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Σ a·b without BLAS: OpenBLAS spreads a long dot product over threads, which on a busy
    two-core machine waits for them far longer than the sum takes."""
    return float(np.einsum("i,i->", a, b))


def bgnbd_fit(x, t_x, T, weights=None) -> Fit:
    """Maximum-likelihood r, alpha, a, b. Reproduces FHL (2005) on CDNOW (see the tests)."""
    started = time.perf_counter()
    x = np.asarray(x, dtype=float)
    t_x = np.asarray(t_x, dtype=float)
    T = np.asarray(T, dtype=float)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float)
    customers = int(w.sum())
    if customers < 2 or not np.any(x > 0):
        return Fit({}, float("nan"), customers, False, message="not enough repeat purchases to fit")
    scale = float(np.average(T, weights=w)) or 1.0  # fit in units where T is about 1: better conditioned
    result = _minimise(_BgnbdLikelihood(x, t_x / scale, T / scale, w), np.log([1.0, 1.0, 1.0, 1.0]))
    r, alpha, a, b = np.exp(result.x)
    alpha *= scale
    log_likelihood = float(np.dot(w, bgnbd_log_likelihood_terms(r, alpha, a, b, x, t_x, T)))
    return Fit(
        {"r": float(r), "alpha": float(alpha), "a": float(a), "b": float(b)},
        log_likelihood,
        customers,
        bool(result.success) or result.fun < 1e299,
        time.perf_counter() - started,
        str(result.message)[:200],
    )


def bgnbd_p_alive(params: dict, x, t_x, T) -> np.ndarray:
    """P(alive | x, t_x, T) (FHL 2005, equation 11 of the note); 1 for customers without repeats."""
    r, alpha, a, b = params["r"], params["alpha"], params["a"], params["b"]
    x = np.asarray(x, dtype=float)
    t_x = np.asarray(t_x, dtype=float)
    T = np.asarray(T, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_ratio = (
            np.log(a) - np.log(b + np.maximum(x, 1) - 1) + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
        )
        p = np.where(x > 0, 1.0 / (1.0 + np.exp(log_ratio)), 1.0)
    return p


def bgnbd_expected(params: dict, t, x, t_x, T) -> np.ndarray:
    """E[purchases in (T, T + t] | x, t_x, T] (FHL 2005, equation 10)."""
    r, alpha, a, b = params["r"], params["alpha"], params["a"], params["b"]
    x = np.asarray(x, dtype=float)
    t_x = np.asarray(t_x, dtype=float)
    T = np.asarray(T, dtype=float)
    t = np.asarray(t, dtype=float)
    z = t / (alpha + T + t)
    hyp = scipy.special.hyp2f1(r + x, b + x, a + b + x - 1, z)
    first = (a + b + x - 1) / (a - 1)
    second = 1 - np.exp((r + x) * (np.log(alpha + T) - np.log(alpha + T + t))) * hyp
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        denominator = 1 + np.where(
            x > 0,
            a / (b + np.maximum(x, 1) - 1) * np.exp((r + x) * (np.log(alpha + T) - np.log(alpha + t_x))),
            0.0,
        )
    return first * second / denominator


def bgnbd_expected_population(params: dict, t) -> np.ndarray:
    """E[X(t)] for a new customer (FHL 2005, equation 7)."""
    r, alpha, a, b = params["r"], params["alpha"], params["a"], params["b"]
    t = np.asarray(t, dtype=float)
    hyp = scipy.special.hyp2f1(r, b, a + b - 1, t / (alpha + t))
    return (a + b - 1) / (a - 1) * (1 - (alpha / (alpha + t)) ** r * hyp)


# --- Gamma-Gamma ------------------------------------------------------------------------


def gamma_gamma_log_likelihood_terms(p, q, v, x, mean_spend) -> np.ndarray:
    """Log-density of each repeat customer's mean spend given x (FHL 2005, RFM and CLV)."""
    x = np.asarray(x, dtype=float)
    m = np.asarray(mean_spend, dtype=float)
    return (
        scipy.special.gammaln(p * x + q)
        - scipy.special.gammaln(p * x)
        - scipy.special.gammaln(q)
        + q * np.log(v)
        + (p * x - 1) * np.log(m)
        + (p * x) * np.log(x)
        - (p * x + q) * np.log(x * m + v)
    )


class _GammaGammaLikelihood:
    """−log-likelihood per repeat customer and its gradient in (log p, log q, log v), with what
    depends on x alone computed once per distinct x and the data-only sums computed once."""

    def __init__(self, x, m, w):
        self.w, self.wx_rows = w, w * x
        self.total = float(w.sum())
        self.spend = x * m
        self.ux, xi = np.unique(x, return_inverse=True)
        self.wx = np.bincount(xi.reshape(-1), weights=w, minlength=len(self.ux))
        self.x_log_x = np.dot(self.wx, self.ux * np.log(self.ux))
        log_m = np.log(m)
        self.wx_log_m = np.dot(self.wx_rows, log_m)
        self.w_log_m = np.dot(w, log_m)
        self.buffers = [np.empty_like(x) for _ in range(2)]

    def __call__(self, log_params):
        gammaln, digamma = scipy.special.gammaln, scipy.special.digamma
        with np.errstate(all="ignore"):
            p, q, v = np.exp(log_params)
            if not all(np.isfinite([p, q, v])) or min(p, q, v) <= 0:
                return 1e300, np.zeros(3)
            ux, W = self.ux, self.total
            pu = p * ux
            total, log_total = self.buffers
            np.add(self.spend, v, out=total)
            np.log(total, out=log_total)
            wx_l, w_l = _dot(self.wx_rows, log_total), _dot(self.w, log_total)
            inv = np.reciprocal(total, out=total)
            value = (
                np.dot(self.wx, gammaln(pu + q) - gammaln(pu) - gammaln(q))
                + W * q * math.log(v)
                + p * self.wx_log_m
                - self.w_log_m
                + p * self.x_log_x
                - p * wx_l
                - q * w_l
            )
            psi = digamma(pu + q)
            d_p = np.dot(self.wx, ux * (psi - digamma(pu))) + self.wx_log_m + self.x_log_x - wx_l
            d_q = np.dot(self.wx, psi - digamma(q)) + W * math.log(v) - w_l
            d_v = W * q / v - p * _dot(self.wx_rows, inv) - q * _dot(self.w, inv)
            gradient = -np.array([d_p * p, d_q * q, d_v * v]) / W
            value = -value / W
        if not np.isfinite(value) or not np.all(np.isfinite(gradient)):
            return 1e300, np.zeros(3)
        return value, gradient


def gamma_gamma_fit(x, mean_spend, weights=None) -> Fit:
    """Maximum-likelihood p, q, v on repeat customers with positive spend only."""
    started = time.perf_counter()
    x = np.asarray(x, dtype=float)
    m = np.asarray(mean_spend, dtype=float)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float)
    keep = (x > 0) & (m > 0)
    x, m, w = x[keep], m[keep], w[keep]
    customers = int(w.sum())
    if customers < 3:
        return Fit({}, float("nan"), customers, False, message="not enough repeat customers to fit")
    scale = float(np.average(m, weights=w))  # fit on spend / mean spend: better conditioned
    result = _minimise(_GammaGammaLikelihood(x, m / scale, w), np.log([1.0, 2.0, 1.0]))
    p, q, v = np.exp(result.x)
    v *= scale
    log_likelihood = float(np.dot(w, gamma_gamma_log_likelihood_terms(p, q, v, x, m)))
    return Fit(
        {"p": float(p), "q": float(q), "v": float(v)},
        log_likelihood,
        customers,
        bool(result.success) or result.fun < 1e299,
        time.perf_counter() - started,
        str(result.message)[:200],
    )


def gamma_gamma_expected_spend(params: dict, x, mean_spend) -> np.ndarray:
    """E[spend per purchase day | x, mean spend]; the population mean for x = 0."""
    p, q, v = params["p"], params["q"], params["v"]
    x = np.asarray(x, dtype=float)
    m = np.nan_to_num(np.asarray(mean_spend, dtype=float))
    population = p * v / (q - 1) if q > 1 else float("nan")
    weight = (q - 1) / (p * x + q - 1)
    return weight * population + (1 - weight) * m


# --- CLV --------------------------------------------------------------------------------

DAYS_PER_MONTH = 365.25 / 12


def discounted_expected_purchases(
    params: dict, x, t_x, T, *, months: int, monthly_discount: float, days_per_unit: float = 1.0
) -> np.ndarray:
    """Σ_k E[purchase days in month k] / (1 + d)^k for k = 1 … months (inputs in days by default).

    CLV over h months = this × E[spend] × margin (METRICS.md).
    """
    total = np.zeros(np.shape(x), dtype=float)
    previous = np.zeros(np.shape(x), dtype=float)
    for k in range(1, months + 1):
        cumulative = bgnbd_expected(params, k * DAYS_PER_MONTH / days_per_unit, x, t_x, T)
        total += (cumulative - previous) / (1 + monthly_discount) ** k
        previous = cumulative
    return total
