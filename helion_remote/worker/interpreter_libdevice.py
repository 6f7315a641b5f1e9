"""libdevice math for Helion kernels run under the Triton interpreter.

Why this exists: Helion (through Inductor's ``TritonOverrides``) emits
``libdevice.exp``, ``libdevice.rsqrt``, ``libdevice.tanh``, ... in the Triton
code it generates.  On a GPU, Triton's code generator swaps those stub
functions for the backend's extern (CUDA/HIP device library) calls.  Under
``TRITON_INTERPRET=1`` nothing does that: the interpreter calls the Python stub
in ``triton.language.extra.libdevice`` (body ``...``) and gets ``None``, so
softmax, layer norm, RMS norm, GELU, ... crash or compute garbage on a CPU-only
worker.

Mechanism: :func:`install_interpreter_libdevice` replaces, *in place*, the
functions of every libdevice module object (``triton.language.extra.libdevice``,
``triton.language.extra.cuda.libdevice``, ``triton.language.extra.hip.libdevice``
and whatever ``torch._inductor.runtime.triton_compat.libdevice`` is bound to --
on Triton 3.6 that is ``triton.language.extra.libdevice`` itself).  Each
supported name is routed to a small ``@triton.jit`` function written with
``triton.language`` math the interpreter implements (``tl.exp``, ``tl.log``,
``tl.sqrt``, ``tl.erf``, ``tl.where``, bitcasts, ...); every other libdevice
name raises :class:`UnsupportedInterpreterMath` instead of returning ``None``.

Why install *before* the generated module is imported: the generated code does
``from torch._inductor.runtime.triton_compat import libdevice`` and calls
``libdevice.exp(...)``, an attribute lookup at call time, which would see a
late patch.  But with ``fast_math`` Helion also emits
``from triton.language.extra.libdevice import fast_dividef`` (and
``fast_expf``): that binds the stub *function object* into the generated
module's globals at import time, and no later patch of the libdevice module
can reach it.  Installing first (e.g. when the worker process starts, before
it loads any kernel) makes both forms resolve to the shim.

The implementations only ever run under the interpreter (they use Python
floats such as ``inf`` as constants, which compiled Triton would reject), so
in GPU mode :func:`install_interpreter_libdevice` is a no-op and nothing is
touched.  Accuracy: functions without a ``tl`` builtin compute in fp64 and
round back, so fp32 results are correctly rounded in practice; fp64 inputs get
a few ulp, except ``pow`` (~1e-14 relative), ``erfinv`` (~30 ulp; ~1e-7
relative beyond |x| > 1 - 1e-6) and ``lgamma`` (~1e-15 absolute, so relative
error grows near its roots at 1 and 2).  Plenty for checking a kernel against
eager PyTorch, which is what an interpreter worker does.
"""

from __future__ import annotations

import importlib
import os
import types
from collections.abc import Callable, Iterator
from typing import Any

import triton
import triton.language as tl

from helion_remote.errors import HelionRemoteError

__all__ = [
    "SUPPORTED_FUNCTIONS",
    "UnsupportedInterpreterMath",
    "install_interpreter_libdevice",
    "interpreter_active",
]

_TRUTHY = frozenset({"1", "true", "yes", "on", "y"})
"""The spellings Triton's own ``getenv_bool`` reads as true."""

_LIBDEVICE_MODULES = (
    "triton.language.extra.libdevice",
    "triton.language.extra.cuda.libdevice",
    "triton.language.extra.hip.libdevice",
)
_MARK = "__helion_remote_interpreter_libdevice__"


def interpreter_active() -> bool:
    """True when ``TRITON_INTERPRET`` is set to a value Triton reads as true."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUTHY


class UnsupportedInterpreterMath(HelionRemoteError, NotImplementedError):
    """A libdevice function the interpreter shim does not implement was called.

    Raised instead of letting the stub return ``None``, which would surface as
    an unrelated ``'NoneType' object has no attribute ...`` much later.
    """


# Python constants: the interpreter runs these functions as plain Python.
_INF = float("inf")
_NAN = float("nan")
_PI = 3.141592653589793
_HALF_PI = 1.5707963267948966
_QUARTER_PI = 0.7853981633974483
_LN2 = 0.6931471805599453
_LN10 = 2.302585092994046
_HALF_LOG_2PI = 0.9189385332046728
_TWO_OVER_SQRT_PI = 1.1283791670955126
_ATAN_MOREBITS = 6.123233995736766e-17  # pi/2 - float64(pi/2), from Cephes atan
_TAN_3PI_8 = 2.414213562373095
_DBL_MIN = 2.2250738585072014e-308
_TWO_POW_54 = 18014398509481984.0
_INT_MIN = -2147483648
_INT_MAX = 2147483647
# Cephes ndtr.c erfc coefficients, highest power first, leading 1 of Q and S
# written out; R is padded with a 0 so both tails run seven Horner steps.
_ERFC_P = (
    2.46196981473530512524e-10, 5.64189564831068821977e-1, 7.46321056442269912687e0,
    4.86371970985681366614e1, 1.96520832956077098242e2, 5.26445194995477358631e2,
    9.34528527171957607540e2, 1.02755188689515710272e3, 5.57535335369399327526e2,
)
_ERFC_Q = (
    1.0, 1.32281951154744992508e1, 8.67072140885989742329e1,
    3.54937778887819891062e2, 9.75708501743205489753e2, 1.82390916687909736289e3,
    2.24633760818710981792e3, 1.65666309194161350182e3, 5.57535340817727675546e2,
)
_ERFC_R = (
    0.0, 5.64189583547755073984e-1, 1.27536670759978104416e0, 5.01905042251180477414e0,
    6.16021097993053585195e0, 7.40974269950448939160e0, 2.97886665372100240670e0,
)
_ERFC_S = (
    1.0, 2.26052863220117276590e0, 9.39603524938001434673e0, 1.20489539808096656605e1,
    1.70814450747565897222e1, 9.60896809063285878198e0, 3.36907645100081516050e0,
)


# --- classification and sign helpers ------------------------------------------------
# (Unannotated on purpose: Triton gives parameter annotations meaning, e.g. constexpr.)


@triton.jit
def _zeros(x):
    # tl.full, a builtin, rather than tl.zeros_like, a jit function of Triton's
    # stdlib: that one is only interpretable if TRITON_INTERPRET was set before
    # triton was imported, and these helpers should not add that constraint.
    return tl.full(x.shape, 0.0, x.dtype)


@triton.jit
def _is_nan(x):
    return x != x


@triton.jit
def _is_inf(x):
    return tl.abs(x) == _INF


@triton.jit
def _sign_bit(x):
    # Bit test, not ``x < 0``: -0.0 and -nan count as negative, as in C.
    if x.dtype == tl.float64:
        neg = x.to(tl.int64, bitcast=True) < 0
    else:
        neg = x.to(tl.float32).to(tl.int32, bitcast=True) < 0
    return neg


@triton.jit
def _copysign(a, b):
    mag = tl.abs(a)
    return tl.where(_sign_bit(b), -mag, mag)


@triton.jit
def _ld_isnan(x):
    return _is_nan(x)


@triton.jit
def _ld_isinf(x):
    return _is_inf(x)


@triton.jit
def _ld_isfinite(x):
    return (x == x) & (tl.abs(x) != _INF)


@triton.jit
def _ld_signbit(x):
    # libdevice returns a nonzero int32, Inductor compares it with 0.
    return _sign_bit(x).to(tl.int32)


@triton.jit
def _ld_copysign(a, b):
    return _copysign(a, b)


@triton.jit
def _ld_fabs(x):
    return tl.abs(x)


@triton.jit
def _ld_fmax(a, b):
    # C fmax: a NaN operand loses to a number.
    r = tl.where(a > b, a, b)
    r = tl.where(_is_nan(b), a, r)
    return tl.where(_is_nan(a), b, r)


@triton.jit
def _ld_fmin(a, b):
    r = tl.where(a < b, a, b)
    r = tl.where(_is_nan(b), a, r)
    return tl.where(_is_nan(a), b, r)


# --- rounding -----------------------------------------------------------------------


@triton.jit
def _ld_floor(x):
    return tl.floor(x)


@triton.jit
def _ld_ceil(x):
    return tl.ceil(x)


@triton.jit
def _ld_trunc(x):
    return _copysign(tl.floor(tl.abs(x)), x)


@triton.jit
def _round_half_even(x):
    f = tl.floor(x)
    d = x - f  # exact
    f_even = (f - 2.0 * tl.floor(0.5 * f)) == 0.0
    r = tl.where(d > 0.5, f + 1.0, tl.where(d < 0.5, f, tl.where(f_even, f, f + 1.0)))
    return _copysign(r, x)  # rint(-0.3) is -0.0


@triton.jit
def _round_half_away(x):
    a = tl.abs(x)
    t = tl.floor(a)
    return _copysign(tl.where(a - t >= 0.5, t + 1.0, t), x)


@triton.jit
def _ld_nearbyint(x):
    return _round_half_even(x)


@triton.jit
def _ld_round(x):
    return _round_half_away(x)


@triton.jit
def _ld_llrint(x):
    return _round_half_even(x).to(tl.int64)


@triton.jit
def _ld_llround(x):
    return _round_half_away(x).to(tl.int64)


@triton.jit
def _ld_fmod(a, b):
    # Float ``%`` is frem (C fmod); copysign pins the sign of a zero result.
    return _copysign(a % b, a)


# --- exponentials and logarithms ----------------------------------------------------


@triton.jit
def _expm1_f64(y):
    # Kahan's trick: (e^y - 1) * y / log(e^y) cancels the rounding of e^y.
    u = tl.exp(y)
    um1 = u - 1.0
    lu = tl.log(u)
    lu_safe = tl.where((lu == 0.0) | (lu != lu) | (tl.abs(lu) == _INF), 1.0, lu)
    r = um1 * (y / lu_safe)
    r = tl.where(u == 1.0, y, r)
    r = tl.where(um1 == -1.0, -1.0, r)
    return tl.where(u == _INF, _INF, r)


@triton.jit
def _log1p_f64(y):
    # Kahan's trick: log(1 + y) * y / ((1 + y) - 1).
    u = 1.0 + y
    um1 = u - 1.0
    um1_safe = tl.where(um1 == 0.0, 1.0, um1)
    r = tl.log(u) * (y / um1_safe)
    r = tl.where(um1 == 0.0, y, r)
    return tl.where(y == _INF, _INF, r)


@triton.jit
def _ld_exp(x):
    return tl.exp(x)


@triton.jit
def _ld_exp2(x):
    return tl.exp2(x)


@triton.jit
def _ld_expm1(x):
    return _expm1_f64(x.to(tl.float64)).to(x.dtype)


@triton.jit
def _ld_log(x):
    return tl.log(x)


@triton.jit
def _ld_log2(x):
    return tl.log2(x)


@triton.jit
def _ld_log10(x):
    return (tl.log(x.to(tl.float64)) / _LN10).to(x.dtype)


@triton.jit
def _ld_log1p(x):
    return _log1p_f64(x.to(tl.float64)).to(x.dtype)


@triton.jit
def _ld_sqrt(x):
    return tl.sqrt(x)


@triton.jit
def _ld_rsqrt(x):
    return tl.rsqrt(x)


@triton.jit
def _ld_fast_dividef(a, b):
    return a / b


@triton.jit
def _ld_ldexp(x, n):
    # Two half-size scalings so 2**n itself never overflows.
    k = n.to(tl.int32)
    h = k // 2
    y = x.to(tl.float64) * tl.exp2(h.to(tl.float64))
    return (y * tl.exp2((k - h).to(tl.float64))).to(x.dtype)


@triton.jit
def _ld_ilogb(x):
    a = tl.abs(x.to(tl.float64))
    sub = a < _DBL_MIN
    bits = tl.where(sub, a * _TWO_POW_54, a).to(tl.int64, bitcast=True)
    e = ((bits >> 52) & 2047).to(tl.int32) - 1023 - tl.where(sub, 54, 0)
    e = tl.where(a == 0.0, _INT_MIN, e)
    e = tl.where(a != a, _INT_MIN, e)
    return tl.where(a == _INF, _INT_MAX, e)


@triton.jit
def _pow_f64(a, b):
    ax = tl.abs(a)
    b_int = b == tl.floor(b)
    small_int = b_int & (tl.abs(b) <= 64.0)
    general = tl.exp2(b * tl.log2(ax))
    # Small integer exponents by repeated squaring: exact when representable.
    n = tl.where(small_int, tl.abs(b), 0.0).to(tl.int64)
    acc = _zeros(ax) + 1.0
    base = ax
    for _ in tl.static_range(7):
        acc = tl.where((n & 1) == 1, acc * base, acc)
        n = n >> 1
        base = tl.where(n > 0, base, 1.0)
        base = base * base
    mag = tl.where(small_int, tl.where(b < 0.0, 1.0 / acc, acc), general)
    odd = b_int & ((tl.abs(b) % 2.0) == 1.0)
    r = tl.where(_sign_bit(a) & odd, -mag, mag)
    r = tl.where((a < 0.0) & (a > -_INF) & (b_int == 0), _NAN, r)
    r = tl.where((a == -1.0) & (tl.abs(b) == _INF), 1.0, r)
    return tl.where((b == 0.0) | (a == 1.0), 1.0, r)


@triton.jit
def _ld_pow(a, b):
    return _pow_f64(a.to(tl.float64), b.to(tl.float64)).to(a.dtype)


@triton.jit
def _ld_hypot(a, b):
    x = tl.abs(a.to(tl.float64))
    y = tl.abs(b.to(tl.float64))
    m = tl.where(x > y, x, y)
    s = tl.where(x > y, y, x)
    m_safe = tl.where((m == 0.0) | (m == _INF), 1.0, m)
    q = s / m_safe
    r = tl.where(m == 0.0, 0.0, m * tl.sqrt(1.0 + q * q))
    r = tl.where((x != x) | (y != y), x + y, r)
    r = tl.where((x == _INF) | (y == _INF), _INF, r)  # C: hypot(inf, nan) is inf
    return r.to(a.dtype)


@triton.jit
def _ld_nextafter(x, y):
    if x.dtype == tl.float64:
        bits = x.to(tl.int64, bitcast=True)
        up = (y > x) == (x > 0.0)
        r = tl.where(up, bits + 1, bits - 1).to(tl.float64, bitcast=True)
        tiny = (bits * 0 + 1).to(tl.float64, bitcast=True)
    else:
        bits = x.to(tl.int32, bitcast=True)
        up = (y > x) == (x > 0.0)
        r = tl.where(up, bits + 1, bits - 1).to(tl.float32, bitcast=True)
        tiny = (bits * 0 + 1).to(tl.float32, bitcast=True)
    r = tl.where(x == 0.0, tl.where(y > 0.0, tiny, -tiny), r)
    r = tl.where(x == y, y, r)
    return tl.where((x != x) | (y != y), x + y, r)


# --- trigonometric and hyperbolic ---------------------------------------------------


@triton.jit
def _atan_f64(y):
    # Cephes atan: range reduction to |r| <= tan(pi/8), then a rational P/Q.
    a = tl.abs(y)
    big = a > _TAN_3PI_8
    mid = a > 0.66
    a_safe = tl.where(big, a, 1.0)
    r = tl.where(big, -1.0 / a_safe, tl.where(mid, (a - 1.0) / (a + 1.0), a))
    # Innermost branch a tensor: tl.where of two Python floats would be fp32.
    zero = _zeros(a)
    base = tl.where(big, _HALF_PI, tl.where(mid, _QUARTER_PI, zero))
    more = tl.where(big, _ATAN_MOREBITS, tl.where(mid, 0.5 * _ATAN_MOREBITS, zero))
    z = r * r
    p = -8.750608600031904122785e-1 * z - 1.615753718733365076637e1
    p = p * z - 7.500855792314704667340e1
    p = p * z - 1.228866684490136173410e2
    p = p * z - 6.485021904942025371773e1
    q = z + 2.485846490142306297962e1
    q = q * z + 1.650270098316988542046e2
    q = q * z + 4.328810604912902668951e2
    q = q * z + 4.853903996359136964868e2
    q = q * z + 1.945506571482613964425e2
    res = base + ((r * (z * p / q) + r) + more)
    return _copysign(res, y)


@triton.jit
def _atan2_f64(y, x):
    ax = tl.abs(x)
    ay = tl.abs(y)
    hi = tl.where(ay > ax, ay, ax)
    lo = tl.where(ay > ax, ax, ay)
    both_inf = (ax == _INF) & (ay == _INF)
    t = tl.where(hi == 0.0, 0.0, lo / tl.where(hi == 0.0, 1.0, hi))
    t = tl.where(both_inf, 1.0, t)
    r = _atan_f64(t)
    r = tl.where(ay > ax, _HALF_PI - r, r)
    r = tl.where(_sign_bit(x), _PI - r, r)
    r = _copysign(r, y)
    return tl.where((x != x) | (y != y), x + y, r)


@triton.jit
def _ld_sin(x):
    return tl.sin(x)


@triton.jit
def _ld_cos(x):
    return tl.cos(x)


@triton.jit
def _ld_tan(x):
    y = x.to(tl.float64)
    return (tl.sin(y) / tl.cos(y)).to(x.dtype)


@triton.jit
def _ld_atan(x):
    return _atan_f64(x.to(tl.float64)).to(x.dtype)


@triton.jit
def _ld_atan2(y, x):
    return _atan2_f64(y.to(tl.float64), x.to(tl.float64)).to(y.dtype)


@triton.jit
def _ld_asin(x):
    y = x.to(tl.float64)
    return _atan2_f64(y, tl.sqrt((1.0 - y) * (1.0 + y))).to(x.dtype)


@triton.jit
def _ld_acos(x):
    y = x.to(tl.float64)
    return _atan2_f64(tl.sqrt((1.0 - y) * (1.0 + y)), y).to(x.dtype)


@triton.jit
def _half_exp_f64(a):
    # e^a / 2 for a up to ~710.5, where e^a alone overflows: (e^(a/2) / 2) * e^(a/2);
    # e^(a - ln 2) would cost ~a ulp from rounding a - ln 2.
    h = tl.exp(0.5 * a)
    return (0.5 * h) * h


@triton.jit
def _ld_sinh(x):
    y = x.to(tl.float64)
    a = tl.abs(y)
    u = _expm1_f64(tl.where(a > 20.0, 20.0, a))
    near = 0.5 * (u + u / (u + 1.0))
    far = _half_exp_f64(a)
    return _copysign(tl.where(a > 20.0, far, near), y).to(x.dtype)


@triton.jit
def _ld_cosh(x):
    a = tl.abs(x.to(tl.float64))
    e = tl.exp(tl.where(a > 20.0, 20.0, a))
    near = 0.5 * (e + 1.0 / e)
    return tl.where(a > 20.0, _half_exp_f64(a), near).to(x.dtype)


@triton.jit
def _ld_tanh(x):
    y = x.to(tl.float64)
    a = tl.abs(y)
    u = _expm1_f64(-2.0 * tl.where(a > 20.0, 20.0, a))
    t = tl.where(a > 20.0, 1.0, -u / (2.0 + u))
    return _copysign(t, y).to(x.dtype)


@triton.jit
def _ld_asinh(x):
    y = x.to(tl.float64)
    a = tl.abs(y)
    big = a > 268435456.0  # 2**28: a*a would dominate 1 anyway
    s = tl.where(big, 1.0, a)
    near = _log1p_f64(s + s * s / (1.0 + tl.sqrt(1.0 + s * s)))
    far = tl.log(a) + _LN2
    return _copysign(tl.where(big, far, near), y).to(x.dtype)


@triton.jit
def _ld_acosh(x):
    y = x.to(tl.float64)
    big = y > 268435456.0
    t = tl.where(big, 1.0, y) - 1.0
    near = _log1p_f64(t + tl.sqrt(2.0 * t + t * t))
    far = tl.log(y) + _LN2
    return tl.where(big, far, near).to(x.dtype)


@triton.jit
def _ld_atanh(x):
    y = x.to(tl.float64)
    a = tl.abs(y)
    r = 0.5 * _log1p_f64(2.0 * a / (1.0 - a))
    return _copysign(r, y).to(x.dtype)


# --- error and gamma functions ------------------------------------------------------


@triton.jit
def _ld_erf(x):
    return tl.erf(x)


@triton.jit
def _exp_neg_sq_f64(a):
    # e^(-a^2) without the ~a^2 ulp error of rounding a*a (Cephes expx2):
    # a = m + f with m on a 1/128 grid, so m*m is exact.
    m = tl.floor(a * 128.0 + 0.5) * 0.0078125
    f = a - m
    return tl.exp(-(m * m)) * tl.exp(-(2.0 * m * f + f * f))


@triton.jit
def _ld_erfc(x):
    y = x.to(tl.float64)
    a = tl.abs(y)
    # |y| < 1: 1 - erf(y) loses nothing.  Beyond: Cephes ndtr.c rational
    # approximations times e^(-a^2), so the tail keeps its relative accuracy.
    b = tl.where(a < 1.0, 1.0, tl.where(a > 30.0, 30.0, a))
    p = _zeros(b)
    q = _zeros(b)
    for i in tl.static_range(9):
        p = p * b + _ERFC_P[i]
        q = q * b + _ERFC_Q[i]
    r = _zeros(b)
    s = _zeros(b)
    for i in tl.static_range(7):
        r = r * b + _ERFC_R[i]
        s = s * b + _ERFC_S[i]
    tail = _exp_neg_sq_f64(b) * tl.where(b < 8.0, p / q, r / s)
    tail = tl.where(a > 30.0, 0.0, tail)  # erfc(26.6) already underflows
    tail = tl.where(y < 0.0, 2.0 - tail, tail)
    r = tl.where(a < 1.0, 1.0 - tl.erf(y), tail)
    return tl.where(a != a, y, r).to(x.dtype)


@triton.jit
def _ld_erfinv(x):
    y = x.to(tl.float64)
    # Giles (2010) single-precision approximation, then Newton on erf where
    # erf' is large enough for the fp64 residual to mean something.
    w = -tl.log((1.0 - y) * (1.0 + y))
    small = w < 5.0
    ws = w - 2.5
    ps = 2.81022636e-08
    ps = 3.43273939e-07 + ps * ws
    ps = -3.5233877e-06 + ps * ws
    ps = -4.39150654e-06 + ps * ws
    ps = 0.00021858087 + ps * ws
    ps = -0.00125372503 + ps * ws
    ps = -0.00417768164 + ps * ws
    ps = 0.246640727 + ps * ws
    ps = 1.50140941 + ps * ws
    wb = tl.sqrt(tl.where(small, 9.0, w)) - 3.0
    pb = -0.000200214257
    pb = 0.000100950558 + pb * wb
    pb = 0.00134934322 + pb * wb
    pb = -0.00367342844 + pb * wb
    pb = 0.00573950773 + pb * wb
    pb = -0.0076224613 + pb * wb
    pb = 0.00943887047 + pb * wb
    pb = 1.00167406 + pb * wb
    pb = 2.83297682 + pb * wb
    r = tl.where(small, ps, pb) * y
    for _ in tl.static_range(2):
        slope = _TWO_OVER_SQRT_PI * tl.exp(-r * r)
        ok = slope > 1e-6
        step = (tl.erf(r) - y) / tl.where(ok, slope, 1.0)
        r = tl.where(ok, r - step, r)
    r = tl.where(tl.abs(y) == 1.0, y * _INF, r)
    return tl.where(tl.abs(y) > 1.0, _NAN, r).to(x.dtype)


@triton.jit
def _lanczos_lgamma_f64(w):
    # Lanczos g=7, n=9 for w >= 0.5: lgamma(w) = log(sqrt(2 pi)) + (z + .5) log(t) - t + log(A).
    z = w - 1.0
    s = 0.99999999999980993
    s += 676.5203681218851 / (z + 1.0)
    s += -1259.1392167224028 / (z + 2.0)
    s += 771.32342877765313 / (z + 3.0)
    s += -176.61502916214059 / (z + 4.0)
    s += 12.507343278686905 / (z + 5.0)
    s += -0.13857109526572012 / (z + 6.0)
    s += 9.9843695780195716e-6 / (z + 7.0)
    s += 1.5056327351493116e-7 / (z + 8.0)
    t = z + 7.5
    return _HALF_LOG_2PI + (z + 0.5) * tl.log(t) - t + tl.log(s)


@triton.jit
def _ld_lgamma(x):
    y = x.to(tl.float64)
    reflect = y < 0.5
    w = tl.where(reflect, 1.0 - y, y)
    lg = _lanczos_lgamma_f64(w)
    # Reflection: lgamma(y) = log(pi / |sin(pi y)|) - lgamma(1 - y); fmod keeps sin exact-ish.
    s = tl.abs(tl.sin(_PI * (y % 2.0)))
    refl = tl.log(_PI / tl.where(s == 0.0, 1.0, s)) - lg
    r = tl.where(reflect, refl, lg)
    r = tl.where(reflect & (y == tl.floor(y)), _INF, r)  # poles at 0, -1, -2, ...
    r = tl.where(tl.abs(y) == _INF, _INF, r)
    return r.to(x.dtype)


# --- the routing table --------------------------------------------------------------

_IMPLS: dict[str, Any] = {
    "abs": _ld_fabs,
    "acos": _ld_acos,
    "acosh": _ld_acosh,
    "asin": _ld_asin,
    "asinh": _ld_asinh,
    "atan": _ld_atan,
    "atan2": _ld_atan2,
    "atanh": _ld_atanh,
    "ceil": _ld_ceil,
    "copysign": _ld_copysign,
    "cos": _ld_cos,
    "cosh": _ld_cosh,
    "div_rn": _ld_fast_dividef,
    "erf": _ld_erf,
    "erfc": _ld_erfc,
    "erfinv": _ld_erfinv,
    "exp": _ld_exp,
    "exp2": _ld_exp2,
    "expm1": _ld_expm1,
    "fabs": _ld_fabs,
    "fast_dividef": _ld_fast_dividef,
    "fast_expf": _ld_exp,
    "fast_tanhf": _ld_tanh,
    "finitef": _ld_isfinite,
    "floor": _ld_floor,
    "fmax": _ld_fmax,
    "fmin": _ld_fmin,
    "fmod": _ld_fmod,
    "hypot": _ld_hypot,
    "ilogb": _ld_ilogb,
    "isfinited": _ld_isfinite,
    "isinf": _ld_isinf,
    "isnan": _ld_isnan,
    "ldexp": _ld_ldexp,
    "lgamma": _ld_lgamma,
    "llrint": _ld_llrint,
    "llround": _ld_llround,
    "log": _ld_log,
    "log10": _ld_log10,
    "log1p": _ld_log1p,
    "log2": _ld_log2,
    "nearbyint": _ld_nearbyint,
    "nextafter": _ld_nextafter,
    "pow": _ld_pow,
    "rint": _ld_nearbyint,
    "round": _ld_round,
    "rsqrt": _ld_rsqrt,
    "signbit": _ld_signbit,
    "sin": _ld_sin,
    "sinh": _ld_sinh,
    "sqrt": _ld_sqrt,
    "sqrt_rn": _ld_sqrt,
    "tan": _ld_tan,
    "tanh": _ld_tanh,
    "trunc": _ld_trunc,
}

SUPPORTED_FUNCTIONS: frozenset[str] = frozenset(_IMPLS)
"""Every libdevice name the shim implements: all that Helion 1.5 and Inductor's
Triton codegen emit, the ones Inductor's ``triton_helpers`` call, and a few
cheap neighbours (``rint``, ``round``, ``fmax``, ...)."""

_installed = False


def _interpreted(impls: dict[str, Any]) -> dict[str, Any]:
    """The table with every jit function an ``InterpretedFunction``.

    ``triton.jit`` picks interpreter or compiler when it decorates, i.e. when
    this module was imported.  If that happened before ``TRITON_INTERPRET``
    was set, re-wrap the module's jit functions now; nested helpers are looked
    up by global name at call time, so rebinding the globals covers them too.
    (Triton's own jit'd stdlib, e.g. ``tl.zeros_like``, has no such rescue:
    set ``TRITON_INTERPRET`` before importing triton anyway.)
    """
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    module_globals = globals()
    swapped: dict[int, Any] = {}
    for name, value in list(module_globals.items()):
        if isinstance(value, JITFunction):
            new = InterpretedFunction(value.fn)
            swapped[id(value)] = new
            module_globals[name] = new
    return {name: swapped.get(id(fn), fn) for name, fn in impls.items()}


def _as_tensor(value: Any, like: Any) -> Any:
    """Lift a Python scalar argument (e.g. a constexpr) into a tensor shaped like
    the tensor argument: the implementations read ``.dtype`` where libdevice
    would have cast, and the interpreter mishandles ``&`` of a 0-d int1 tensor
    with a block, so everything stays block-shaped."""
    if isinstance(value, tl.tensor):
        return value
    if isinstance(value, tl.constexpr):
        value = value.value
    shape = like.shape if like is not None else []
    if isinstance(value, bool):
        return tl.full(shape, value, tl.int1)
    if isinstance(value, float):
        dtype = like.dtype if like is not None and like.dtype.is_floating() else tl.float32
        return tl.full(shape, value, dtype)
    if isinstance(value, int):
        return tl.full(shape, value, tl.int32 if -(2**31) <= value < 2**31 else tl.int64)
    return value


def _routed(name: str, impl: Any) -> Callable[..., Any]:
    import numpy as np  # the interpreter needs it anyway; GPU mode never gets here

    def libdevice_function(*args: Any, **kwargs: Any) -> Any:
        kwargs.pop("_semantic", None)  # what compiled-mode extern calls pass along
        like = next((a for a in args if isinstance(a, tl.tensor)), None)
        args = tuple(_as_tensor(a, like) for a in args)
        if len(args) == 2 and all(isinstance(a, tl.tensor) for a in args):
            if list(args[0].shape) != list(args[1].shape):
                args = tuple(tl.broadcast(*args))
        # The implementations evaluate branches they then discard (tl.where),
        # so numpy would warn about overflows nobody sees on a GPU.
        with np.errstate(all="ignore"):
            return impl(*args, **kwargs)

    libdevice_function.__name__ = name
    libdevice_function.__qualname__ = name
    libdevice_function.__doc__ = f"libdevice.{name} under TRITON_INTERPRET=1 (helion_remote shim)."
    setattr(libdevice_function, _MARK, True)
    return libdevice_function


def _unsupported(name: str) -> Callable[..., Any]:
    supported = ", ".join(sorted(SUPPORTED_FUNCTIONS))

    def libdevice_function(*args: Any, **kwargs: Any) -> Any:
        raise UnsupportedInterpreterMath(
            f"libdevice.{name} is not available under TRITON_INTERPRET=1 "
            f"(helion_remote.worker.interpreter_libdevice); supported: {supported}"
        )

    libdevice_function.__name__ = name
    libdevice_function.__qualname__ = name
    setattr(libdevice_function, _MARK, True)
    return libdevice_function


def _libdevice_namespaces() -> Iterator[types.ModuleType]:
    """Every libdevice module object generated code can reach, each once."""
    seen: set[int] = set()
    candidates: list[Any] = []
    for module_name in _LIBDEVICE_MODULES:
        try:
            candidates.append(importlib.import_module(module_name))
        except ImportError:
            continue
    try:
        from torch._inductor.runtime import triton_compat
    except ImportError:
        pass
    else:
        candidates.append(getattr(triton_compat, "libdevice", None))
    for module in candidates:
        # On old Tritons triton_compat falls back to tl.math, whose builtins the
        # interpreter already handles: leave anything but a libdevice module alone.
        if not isinstance(module, types.ModuleType) or not module.__name__.endswith("libdevice"):
            continue
        if id(module) not in seen:
            seen.add(id(module))
            yield module


def _patch(module: types.ModuleType, routed: dict[str, Callable[..., Any]]) -> None:
    if getattr(module, _MARK, False):
        return
    for name, value in list(vars(module).items()):
        if name.startswith("_") or not callable(value) or isinstance(value, type):
            continue
        if name not in routed:
            setattr(module, name, _unsupported(name))
    for name, fn in routed.items():
        setattr(module, name, fn)
    setattr(module, _MARK, True)


def install_interpreter_libdevice() -> None:
    """Route libdevice calls to interpreter-safe math; idempotent, no-op on GPU.

    Call it before importing any Helion-generated module (see the module
    docstring: ``from triton.language.extra.libdevice import fast_dividef``
    binds at import time).
    """
    global _installed
    if _installed or not interpreter_active():
        return
    impls = _interpreted(_IMPLS)
    routed = {name: _routed(name, impl) for name, impl in impls.items()}
    for module in _libdevice_namespaces():
        _patch(module, routed)
    _installed = True
