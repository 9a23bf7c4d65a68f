"""Distances between two engines (absolute, relative, ULP), the tolerance model, the verdict.

The tolerance model
-------------------
Both engines round, in different orders, so each value differs by a few roundings of the
numbers that went INTO it, not of the result. And from the second step on, the engines start
from parameters that already differ a little. Per step and field, with ``Δ = manual - torch``::

    ok  <=>  |Δ - C| <= tol,   tol = atol + rtol * E

* ``C`` (carried): what the measured differences the step started from (``w``, ``b``, the
  buffers, each signed) make of this value in exact arithmetic. The batch loss's gradients
  are linear in (w, b), so for them C is exact: ``C[grad_w] = (2/n)(sum x_i^2 dw + sum x_i db)``,
  ``C[grad_b] = (2/n)(sum x_i dw + n db)``; for the loss (quadratic) it is exact too:
  ``C[loss] = (1/n)(2 sum d_i e_i - sum e_i^2)`` with ``e_i = x_i dw + db``. The update is linear
  in its inputs, so C carries the measured signed differences through it exactly. So every
  step is judged as a step: only what it adds on its own must be rounding.

* ``E`` (rounding scale): a bound, in units of the unit roundoff u, on the rounding error ONE
  engine (either one) makes in that value, built from the magnitudes it rounded.
  For a batch of n samples at the step's starting parameters (w, b), with
  ``M_i = |w x_i| + |b| + |y_i|`` (what d_i = w*x_i + b - y_i is rounded from, 3 roundings, so
  each engine's computed residual is within ``3u*M_i`` of its exact one) and
  ``D = min(n-1, ceil(log2 n) + 16)`` (a depth for the sums: NumPy's pairwise sum, which
  adds 8-way blocks of up to 128 numbers and halves above that, has depth at most
  ``log2 n + 12``; torch's reductions are blocked and vectorised likewise)::

      dbar_i    = max(|d_i|, |d_i - e_i|) + 3u*M_i
      E[grad_w] = (2/n) * (3*sum |x_i| M_i + (3 + D) * sum dbar_i |x_i|)
      E[grad_b] = (2/n) * (3*sum M_i       + (2 + D) * sum dbar_i)
      E[loss]   = (1/n) * (6*sum dbar_i M_i + (2 + D) * sum dbar_i^2)

  ``d_i`` is the manual engine's exact residual, ``d_i - e_i`` torch's (``e_i = x_i dw + db``), so
  ``dbar_i`` bounds |the residual either engine computed|, whichever of them rounded to zero.
  That closes the first-order model's hole: the loss's error is
  ``|dhat^2 - d^2| <= 2|d| eps + eps^2`` with ``eps <= 3u*M``; the first-order term alone,
  ``6u|d|M``, is 0 where d is 0 while eps^2 = (3u*M)^2 is not, and ``6u*dbar*M`` covers both
  (``6u(|d| + 3uM)M >= 6u|d|M + 9u^2 M^2``); the sums' and squares' roundings are of the
  computed residuals, at most dbar each, and the same for the gradients.

  C is computed here in float64 from the measured differences: its own error enters E too
  (negligible in float32 runs; in float64 runs d_i is itself known to ``3u*M_i`` only, and a
  C predicting a difference that rounding wiped out must be allowed for), with
  ``u64 = 2^-53``::

      E[grad_w] += (u64/u) (2/n) (4 + D) (sum x_i^2 |dw| + sum |x_i| |db|)
      E[grad_b] += (u64/u) (2/n) (4 + D) (sum |x_i| |dw| + n |db|)
      E[loss]   += (u64/u) (1/n) (6 sum |e_i| M_i + (5 + D) sum (2 dbar_i |e_i| + e_i^2))

  For w, b and the optimizer's state (SGD's momentum buffers), one term per operation of the
  optimizer's update (each optimizer module sizes its own: ``update_bound``, e.g.
  :func:`sgdtrace.engines.optimizers.sgd.update_bound`), each the size of that operation's own
  result, the larger of both engines' (see :class:`_Bound`):
  a result that rounds to zero in one engine is sized by the other's, and one that is exactly
  zero came from an exact subtraction. Their carries are computed in float64 too, and so is
  ``Δ = a - b``: that rounding is not second order where the engines' runs have parted (a
  chaotic run, the carry as large as the values), and in a float64 run it is as large as the
  engines' own. Each operation bounds its carry's float64 error (``Track.cerr``), and
  ``(cerr + u64|Δ|)/u`` enters E as the gradients' does (docs/tolerance.md, "The judge's own
  rounding").

  Near convergence d_i is tiny while M_i is not: E stays large while the gradient is small,
  so the gradients' relative difference can be large (18% after 3,000 epochs on the
  article's data in float32) while E explains it. A wrong formula is off by the size of the
  value itself and is caught at its first step.

* ``rtol`` defaults to ``4u`` (2 machine epsilons): each engine is within ``u*E``, so the
  two differ by at most ``2u*E``; the factor 2 covers the second-order terms and the
  operation orders the first-order model does not spell out (fused multiply-add, other
  reduction trees). ``atol`` defaults to the dtype's smallest normal number, for underflow.
  Both can be set with ``--rtol`` and ``--atol``: then ``rtol`` replaces the ``4u``.

What a per-step judge cannot see: a systematic error smaller than one step's rounding
allowance (about two ulps of the parameter). Measured on the article's data over 3,000 epochs:
a bias of 2 ulps per step on w and b is caught at step 5 (float32; step 11 in float64), one
ulp per step passes (it uses 99% of the allowance at worst). A drift judge over steps (the
running sum of the signed residuals ``Δ - C`` against a random-walk bound) is not used: honest
rounding is deterministic, and on a cycle of batches it repeats, so that sum drifts linearly in
honest runs too (on the same run it reaches 6.9 times its random-walk scale at step 9,000 and
grows like sqrt(steps); a 1-ulp bias reaches 57), and any fixed constant raises false alarms on
a long enough run. Honest runs use at most half of the allowance (see the README for the study).

Non-finite values: nan on both sides, or infinities of the same sign, agree; infinities of
opposite signs do not (unless the step started from non-finite values), except for a gradient
whose terms can reach the overflow threshold in both directions: engines that add them in
different orders can overflow one to +inf and the other to -inf. The terms' positive and
negative parts are bounded per sample by ``max(d_i + 3u*M_i, d_i - e_i + 3u*M_i, 0)`` and
``max(3u*M_i - d_i, e_i - d_i + 3u*M_i, 0)`` (times ``1 + |x_i|`` for dl/dw, sign by sign); both
sums, doubled, must reach the threshold. A loss (a sum of squares) and the two-operand
updates cannot overflow both ways. A finite value against
an infinite or nan one agrees only when the finite one is within tolerance of the overflow
threshold, or when an intermediate of its computation can reach that threshold. The engines compute through
intermediates larger than the result, in different orders: the manual engine forms ``2*d_i``
before dividing by n (dl/de times de/dd), torch's MSELoss backward forms ``(2/n)*d_i``; both
sum ``d_i^2`` before dividing by n. So near overflow one engine can overflow where the other
does not, and neither is wrong (seen on the article's data with lr 1 after 29 steps in
float32: dl/db is -inf by hand, -2.99e38 in torch). The bound ``peak`` on those intermediates,
from ``M_i`` (which bounds |w x_i|, |w x_i + b| and |d_i| in both engines)::

    peak[grad_b] = 2 * sum M_i                 (2 d_i, (2/n) d_i, their partial sums)
    peak[grad_w] = 2 * sum (1 + |x_i|) M_i     (and (2/n) d_i x_i, its partial sums)
    peak[loss]   = sum M_i + (sum M_i)^2       (d_i, d_i^2, their partial sums)

and for w, b and the buffers the magnitude bound of the update's operands (``_Bound.mag``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sgdtrace import dtypes
from sgdtrace.engines import optimizers
from sgdtrace.engines.protocol import FIELDS, LR, PARAMS, state_field  # noqa: F401  (FIELDS: re-exported)
from sgdtrace.track import U64

# the records (FieldDivergence, the verdict) live in sgdtrace.verdict; importable from here as before
from sgdtrace.verdict import FieldDivergence, FieldSummary, Verdict, json_number, verdict  # noqa: F401


def unit_roundoff(dtype: str) -> float:
    return dtypes.unit_roundoff(dtype)


def default_tolerance(dtype: str) -> tuple[float, float]:
    """``(rtol, atol)``: ``rtol = 4u`` (two engines, each within u*E, doubled), ``atol`` = smallest normal."""
    tiny = float(dtypes.finfo(dtype).tiny)
    return 4 * unit_roundoff(dtype), tiny


def tolerances(config) -> tuple[float, float]:
    rtol, atol = default_tolerance(config.dtype)
    return (config.rtol if config.rtol is not None else rtol, config.atol if config.atol is not None else atol)


# ------------------------------------------------------------------ distances


def ordered_bits(values: np.ndarray) -> np.ndarray:
    """Map floats to integers that count representable values in order (+0 and -0 both to 0)."""
    if values.dtype == np.float32:
        i = values.view(np.int32).astype(np.int64)
        return np.where(i < 0, -(2**31) - i, i)
    if values.dtype.itemsize == 2:  # bfloat16, float16: sign and magnitude in 16 bits
        i = values.view(np.int16).astype(np.int64)
        return np.where(i < 0, -(2**15) - i, i)
    i = values.astype(np.float64).view(np.int64)
    with np.errstate(over="ignore"):
        return np.where(i < 0, np.int64(-(2**63)) - i, i)


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How many representable values lie between a and b (exact, as uint64; 0 where not finite)."""
    oa, ob = ordered_bits(a), ordered_bits(b)
    with np.errstate(over="ignore"):
        diff = oa - ob
        dist = np.where(oa >= ob, diff, -diff).view(np.uint64)
    finite = np.isfinite(a) & np.isfinite(b)
    return np.where(finite, dist, np.uint64(0))


# ------------------------------------------------------------------ the error model


@dataclass
class _Bound:
    """A value both engines compute, tracked per step: magnitude, rounding, carried difference.

    ``mag``    upper bound of |value|
    ``rnd``    rounding error bound of ONE engine, in units of u (the E above)
    ``carry``  manual minus torch in exact arithmetic, from the measured (signed) differences of
               the inputs (the C above)
    """

    mag: np.ndarray
    rnd: np.ndarray
    carry: np.ndarray

    @staticmethod
    def measured(a: np.ndarray, b: np.ndarray) -> _Bound:
        """An input both engines recorded: its difference is measured, not modelled.

        Its magnitude is the larger FINITE one: where one engine overflowed, what the other's
        rounding amounts to is left to the overflow rule (``peak``), and where both did the
        magnitude is nan (nothing finite to bound).
        """
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        mag = np.fmax(np.where(np.isfinite(a64), np.abs(a64), np.nan), np.where(np.isfinite(b64), np.abs(b64), np.nan))
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: nan, judged as non-finite
            return _Bound(mag, np.zeros_like(a64), a64 - b64)

    def combine(self, coef: float, other: _Bound, result: np.ndarray | None = None) -> _Bound:
        """``self + coef * other``: the product rounds (unless coef is +-1), then the sum rounds.

        Each rounding is at most u times its own result: ``|coef| * |other|`` for the product,
        ``|self + coef*other|`` for the sum, bounded by ``mag`` or given as ``result`` when
        that result is measured.
        """
        c = abs(coef)
        mag = self.mag + c * other.mag
        rounding = (0.0 if c == 1 else c * other.mag) + (mag if result is None else result)
        return _Bound(mag, self.rnd + c * other.rnd + rounding, self.carry + coef * other.carry)

    def scaled(self, coef: float) -> _Bound:
        """``coef * self``, its product's rounding included (none for +-1)."""
        c = abs(coef)
        return _Bound(c * self.mag, c * self.rnd + (0.0 if c == 1 else c * self.mag), coef * self.carry)

    def where(self, mask: np.ndarray, other: _Bound) -> _Bound:
        return _Bound(
            np.where(mask, other.mag, self.mag),
            np.where(mask, other.rnd, self.rnd),
            np.where(mask, other.carry, self.carry),
        )


def _shift(col: np.ndarray, first) -> np.ndarray:
    """The value each step started from: the previous step's column, ``first`` (a number, or an
    array of the value's shape) at step 0."""
    out = np.empty(col.shape, dtype=np.float64)
    if col.shape[0]:
        out[0] = first
        out[1:] = col[:-1]
    return out


def _cast(values: np.ndarray, dtype: str) -> np.ndarray:
    """float64 values rounded to ``dtype`` as torch rounds them (to 16 bits through float32)."""
    return dtypes.cast(values, dtype)


def compare_columns(
    a: dict[str, np.ndarray],
    b: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    plan,
    config,
    model=None,
    initial: dict[str, np.ndarray] | None = None,
    hidden: tuple[str, ...] = (),
    step: bool | None = None,
    extras: dict | None = None,
    schedule=None,
) -> dict[str, FieldDivergence]:
    """Judge engine ``b`` against engine ``a`` (both ran ``config`` over ``plan``), field by field.

    ``step`` (default: ``config.judge == "step"``): engine ``a`` started every step from ``b``'s
    values (``--judge step``): both sides' starts are ``b``'s, nothing is carried (C = 0).
    ``extras``: a dict that receives what the model's terms report beside E and C (``ambiguous``:
    per step, the elements whose relu branch the sides may honestly take apart).

    ``model`` (:class:`sgdtrace.models.Model`; default: the one ``config`` and ``x`` make, see
    :func:`sgdtrace.engines.protocol.model_for`) gives the terms of the loss and the gradients;
    ``initial``: its parameters' initial values (default: the model's, from ``config``).
    ``hidden``: state columns engine ``a`` keeps where the judge cannot see them (a user's update
    that keeps SGD's buffer under a name of its own); ``a`` holds ``b``'s values in their place,
    and their unseen differences are carried and bounded (:func:`_hidden_state`). ``schedule``: the
    run's schedule table (:func:`sgdtrace.engines.optimizers.schedules.table`), when worked out already.
    """
    from sgdtrace.engines.protocol import model_for

    dtype = config.dtype
    rtol, atol = tolerances(config)
    steps = plan.n_steps
    model = model or model_for(config, x)
    if initial is None:
        initial = model.module.initial(config, model)
    # x and y exactly as both engines saw them: rounded to the run's dtype
    xr, yr = _cast(np.asarray(x), dtype).astype(np.float64), _cast(y, dtype).astype(np.float64)

    if step is None:
        step = config.judge == "step"
    # where each step started: the hand side's own values, or (--judge step) torch's
    s = b if step else a
    # each parameter at the step's start: its bound (the initial value as given at step 0), and
    # the hand side's value (the initial value rounded to the dtype at step 0)
    p = {name: _Bound.measured(_shift(s[name], initial[name]), _shift(b[name], initial[name])) for name in model.names}
    starts = {name: _shift(s[name], _cast(initial[name], dtype).astype(np.float64)) for name in model.names}
    terms = model.module.gradient_terms(model, starts, p, xr, yr, plan, config)
    if extras is not None and "ambiguous" in terms:  # relu's kink: per step, the elements in doubt
        extras["ambiguous"] = terms["ambiguous"]
    with np.errstate(over="ignore", invalid="ignore"):
        tol = {f: atol + rtol * E for f, E in terms["E"].items()}
        carried, peak, both = dict(terms["C"]), dict(terms["peak"]), terms["both"]

        # the update: each optimizer sizes the roundings of its own operations
        _update_terms(a, b, p, config, plan, tol, carried, peak, atol, rtol, model, initial, hidden, s, schedule)
        for param in model.params:  # where the update is reproduced rule by rule: same inputs, same bits
            if not exact_update(config, param.size):
                continue
            name = param.name
            cols = {key: state_field(key, name) for key in optimizers.get("sgd").state_keys(config)}
            same = _same_inputs(a, b, name, cols, config, initial[name], s)
            for f in (name, *cols.values()):
                tol[f] = np.where(same, 0.0, tol[f])

    out = {f: _distances(a[f], b[f], tol[f], dtype, peak[f], carried[f], both.get(f)) for f in tol}
    if LR in a and LR in b:  # a schedule: the rate each step used, worked out in Python floats alike
        out[LR] = _distances(a[LR], b[LR], np.zeros(steps), "float64")
    return out


def _update_terms(
    a,
    b,
    p,
    config,
    plan,
    tol,
    carried,
    peak,
    atol,
    rtol,
    model,
    initial,
    hidden,
    starts_from,
    schedule,
) -> None:
    """Each parameter and the optimizer's state: the optimizer's ``update_bound`` with the measured inputs.

    Each parameter's step starts from the recorded parameter, gradient and state (the initial
    state at the first step: ``initial_state``; ``starts_from``: the columns the hand side's steps
    started from, ``a`` itself or under ``--judge step`` torch's), and is judged on the new parameter and each
    recorded state entry. Under a schedule the per-step rate is torch's recorded one (the ``lr``
    field judges the hand side's against it). The update runs element-wise: the per-step values
    (rate, step count, first step) broadcast over the parameter's shape.
    """
    from sgdtrace.engines.optimizers import StepContext, _fused, schedules
    from sgdtrace.engines.optimizers._track import Track

    s = starts_from
    opt = optimizers.get(config.optimizer)
    keys = opt.state_keys(config)
    init = opt.initial_state(config)
    steps = plan.n_steps
    first = np.zeros(steps, dtype=bool)
    first[:1] = True
    lr = np.full(steps, float(config.lr))
    group = {}
    if config.scheduler is not None:
        schedule = schedule or schedules.table(config, plan)
        lr = schedule.per_step("lr")
        if schedules.cycles_momentum(config):
            key = schedules.momentum_key(config)
            group[key] = schedule.per_step(key)
    t = np.arange(1, steps + 1, dtype=np.float64)
    u = unit_roundoff(config.dtype)
    for param in model.params:
        name = param.name

        def per_step(v, shape=param.shape):  # (steps,) against (steps, *shape)
            return v.reshape(v.shape + (1,) * len(shape))

        ctx = StepContext(lr=per_step(lr), t=per_step(t), u=u, group={k: per_step(v) for k, v in group.items()})
        g = Track.measured(a["grad_" + name], b["grad_" + name])
        cols = {key: state_field(key, name) for key in keys}
        start = {key: float(_cast(np.array([init[key]]), config.dtype)[0]) for key in keys}
        prev = {key: Track.measured(_shift(s[f], start[key]), _shift(b[f], start[key])) for key, f in cols.items()}
        cur = {key: Track.measured(a[f], b[f]) for key, f in cols.items()}
        if _fused.form(config) is not None:
            # the fused kernel goes on with each state entry before it rounds it to 16 bits: within
            # one rounding of the recorded value, in either engine
            for entry in cur.values():
                entry.rnd = np.where(np.isfinite(entry.mag), entry.mag, entry.rnd)
        new_mag = Track.measured(a[name], b[name]).mag
        init_p = _cast(np.asarray(initial[name], dtype=np.float64), config.dtype).astype(np.float64)
        pt = Track.measured(_shift(s[name], init_p), _shift(b[name], init_p))
        pt.mag, pt.carry = p[name].mag, p[name].carry
        first_p = per_step(first)
        for key in (key for key, f in cols.items() if f in hidden):
            cur[key] = _hidden_state(opt, key, pt, g, prev, cur, new_mag, first_p, config, ctx)
        new, states = opt.update_bound(pt, g, prev, cur, new_mag, first_p, config, ctx)
        for f, bound in ((name, new), *((cols[key], states[key]) for key in keys)):
            # the judge's own float64 rounding: the carry's (cerr) and Δ's (a - b), in units of u
            delta = np.abs(a[f].astype(np.float64) - b[f].astype(np.float64))  # (in compare_columns' errstate)
            judge = bound.cerr + U64 * np.where(np.isfinite(delta), delta, 0.0)
            tol[f] = atol + rtol * (bound.rnd + judge / u)
            carried[f] = bound.carry
            peak[f] = bound.mag


def _hidden_state(opt, key, p, g, prev, cur, new_mag, first, config, ctx):
    """A state entry one engine keeps where the judge cannot see it: its difference carried, its
    rounding accumulated, step after step (docs/tolerance.md, "A state the judge cannot see").

    ``prev``/``cur`` hold the other engine's recorded values for it (carry 0). The model's bound
    of the entry's update is affine in the previous entry's carry and rounding:
    ``C_k = a_k C_(k-1) + c_k``, ``R_k = r_k R_(k-1) + q_k |C_(k-1)| + e_k`` (SGD's buffer: ``a_k = r_k = momentum``,
    0 at the first step, which copies the gradient), with nothing carried in before the first
    step. ``a_k`` and ``r_k`` are read off the model itself (the update's bound with the previous
    carry and rounding at 0 and at 1), and the recursions run over the steps; where the update is
    not affine in them (a ``maximum``), the entry and what it feeds are not judged (infinite
    rounding). Returns the entry's ``cur`` with the carried difference ``C`` and the rounding
    bound ``R`` in place (what the parameter's update goes on from).
    """
    from sgdtrace.engines.optimizers._track import Track

    zero = np.zeros_like(prev[key].v)

    def bound(c, r):
        before = dict(prev)
        before[key] = Track(prev[key].v, prev[key].mag, zero + r, zero + c)
        return opt.update_bound(p, g, before, cur, new_mag, first, config, ctx)[1][key]

    # the responses to the previous carry and rounding, read one at a time: a coefficient's own
    # rounding puts |C_(k-1)| into the rounding too (``_track._coefficient``: ``q_k``)
    at0, c1, c2, r1, r2 = bound(0.0, 0.0), bound(1.0, 0.0), bound(2.0, 0.0), bound(0.0, 1.0), bound(0.0, 2.0)
    a, q, r = c1.carry - at0.carry, c1.rnd - at0.rnd, r1.rnd - at0.rnd
    affine = (
        np.isclose(c2.carry - at0.carry, 2 * a)
        & np.isclose(c2.rnd - at0.rnd, 2 * q)
        & np.isclose(r2.rnd - at0.rnd, 2 * r)
        & np.isclose(r1.carry, at0.carry)
    )
    C, R = at0.carry.copy(), np.where(affine, at0.rnd, np.inf)
    J = np.broadcast_to(np.asarray(at0.cerr, dtype=np.float64), C.shape).copy()  # C's own float64 error
    for k in range(1, a.shape[0]):  # the recursions, step by step (only for an engine with a hidden state)
        R[k] += r[k] * R[k - 1] + q[k] * abs(C[k - 1])
        C[k] += a[k] * C[k - 1]
        J[k] += abs(a[k]) * J[k - 1] + U64 * (abs(a[k] * C[k - 1]) + abs(C[k]))
    return Track(cur[key].v, cur[key].mag + np.abs(C), R, C, J)


def exact_update(config, numel: int = 1) -> bool:
    """Is the update of a parameter of ``numel`` elements judged exactly where its inputs agree bit
    for bit? SGD in bfloat16 and float16 on the CPU under the default tolerances, for a parameter
    of fewer elements than the kernels' narrowest vector (16: the article's one-element w and b, a
    few features' w): every element then takes the kernels' scalar loop, whose roundings the hand
    side reproduces (docs/precision.md), so the same parameter, gradient and state give the same
    bits. A longer parameter's whole vectors take the vectorised loop, which rounds ``add_(alpha=)``
    once where the scalar loop rounds three times (``sgdtrace doctor``: the chunk is 16 or 32
    elements by the CPU build): judged by the general allowance, which covers both. With
    ``--fused`` only where this machine's fused kernel was probed to round as the hand side's rule
    (:func:`sgdtrace.engines.optimizers._fused.exact`): the compiler decides part of it. Never for a
    user's engine (``--engine``): NumPy on ``ml_dtypes`` rounds each operation where torch's kernels
    keep float32 intermediates, judged by the general allowance."""
    from sgdtrace.engines.optimizers import _fused
    from sgdtrace.models.linear import user_side

    if user_side(config):
        return False
    if not (
        config.dtype in dtypes.REDUCED
        and config.device == "cpu"
        and config.optimizer == "sgd"
        and config.scheduler is None
        and config.rtol is None
        and config.atol is None
        and _fused.scalar_loop(numel)
    ):
        return False
    if config.fused:
        return _fused.exact(config, numel)
    return True


def _same_inputs(a, b, name: str, cols: dict[str, str], config, init=None, starts_from=None) -> np.ndarray:
    """Per step (and element): did both engines start the update of ``name`` from the same
    parameter, gradient and state (equal values)? ``init``: the parameter's initial value."""
    if init is None:
        init = {"w": config.init_w, "b": config.init_b}[name]
    s = a if starts_from is None else starts_from
    same = (_shift(s[name], init) == _shift(b[name], init)) & (a["grad_" + name] == b["grad_" + name])
    for f in cols.values():
        same &= _shift(s[f], 0.0) == _shift(b[f], 0.0)
    return same


def _distances(
    a: np.ndarray,
    b: np.ndarray,
    tol: np.ndarray,
    dtype: str,
    peak: np.ndarray | None = None,
    carried: np.ndarray | None = None,
    both: np.ndarray | None = None,
) -> FieldDivergence:
    """Distances and agreement: ``|a - b - carried| <= tol``; ``peak`` bounds the intermediates'
    magnitude, ``both`` says where they can overflow in either direction (overflow, see the
    module's docstring)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if carried is None:
        carried = np.zeros_like(a64)
    fa, fb = np.isfinite(a64), np.isfinite(b64)
    finite = fa & fb
    big = float(dtypes.finfo(dtype).max)
    with np.errstate(invalid="ignore", over="ignore"):  # the divisions below never divide by 0
        diff = np.where(finite, np.abs(a64 - b64), 0.0)
        scale = np.maximum(np.abs(a64), np.abs(b64))
        rel = np.where(finite & (scale > 0), diff / np.where(scale > 0, scale, 1.0), 0.0)
        fresh = np.where(finite, np.abs((a64 - b64) - carried), 0.0)
        # inputs that were already non-finite, or bounds that overflowed: nothing finite to hold to
        unbounded = ~np.isfinite(tol) | ~np.isfinite(carried)
        overflowed = unbounded | ~(peak < big) if peak is not None else unbounded
        ok_finite = finite & ((fresh <= tol) | unbounded)
        same = (np.isnan(a64) & np.isnan(b64)) | (np.isinf(a64) & (a64 == b64))
        opposite = np.isinf(a64) & np.isinf(b64) & (a64 != b64)
        if both is not None:
            opposite &= ~both
        ok_nonfinite = ~fa & ~fb & (same | (overflowed & ~opposite) | ~np.isfinite(carried))
        fin_mag = np.where(fa, np.abs(a64), np.abs(b64))
        ok_mixed = (fa ^ fb) & (overflowed | (fin_mag + tol + np.abs(carried) >= big))
        judged = finite & ~unbounded
        ratio = np.where(
            judged, np.where(tol > 0, fresh / np.where(tol > 0, tol, 1.0), np.where(fresh > 0, np.inf, 0.0)), 0.0
        )
    ok = ok_finite | ok_nonfinite | ok_mixed
    return FieldDivergence(diff, rel, ulp_distance(a, b), tol, ok, finite, np.where(finite, carried, 0.0), ratio)


# ------------------------------------------------------------------ data-parallel SGD: the all-reduce


def compare_allreduce(
    rank_divs: list[dict[str, FieldDivergence]],
    man_ranks: dict[str, np.ndarray],
    ref_ranks: dict[str, np.ndarray],
    a: dict[str, np.ndarray],
    b: dict[str, np.ndarray],
    config,
) -> dict[str, FieldDivergence]:
    """Judge the step's averaged gradients and mean loss of a ``--world-size N`` run.

    Each rank's own gradients and loss are judged with the per-batch terms above, on the rank's
    batch (``rank_divs[r]``). DDP's average ``fl(sum_r fl(g_r * fl(1/N)))`` (see
    :mod:`sgdtrace.engines.ddp`) carries each rank's difference and rounding scaled by 1/N, and
    adds its own roundings: per term, ``1/N`` rounded and the product rounded (2 roundings of
    ``|g_r|/N``), and a sum of N terms in any order ((N-1) roundings of at most ``sum |g_r|/N``)::

        C[avg] = (1/N) sum_r C_r
        E[avg] = (1/N) sum_r E_r + (N + 1) * (1/N) sum_r |g_r|

    The step's loss is the mean of the ranks' losses (sgdtrace's, the same on both sides: a
    float64 mean rounded to the run's type): ``E = (1/N) sum_r E_r + (N + 1) * mean |l_r|``.
    """
    rtol, atol = tolerances(config)
    world = man_ranks["loss"].shape[1]
    out = {}
    with np.errstate(over="ignore", invalid="ignore"):
        for f in man_ranks:  # each parameter's gradient (element-wise) and the loss
            E_ranks = sum((d[f].tol - atol) / rtol if rtol > 0 else 0.0 * d[f].tol for d in rank_divs) / world
            carried = sum(d[f].carried for d in rank_divs) / world
            mag = np.fmax(np.abs(man_ranks[f].astype(np.float64)), np.abs(ref_ranks[f].astype(np.float64)))
            E = E_ranks + (world + 1) * mag.sum(axis=1) / world
            peak = mag.max(axis=1) * world
            out[f] = _distances(a[f], b[f], atol + rtol * E, config.dtype, peak, carried)
    return out
