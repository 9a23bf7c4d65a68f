"""Your own engine under the judge: a learner's file in the place of sgdtrace's hand-worked engine.

``FILE.py`` defines any of the engine protocol's parts (:mod:`sgdtrace.engines.protocol`)::

    gradients(w, b, x, y)          -> (loss, grad_w, grad_b)
    update(param, grad, state, hp) -> new param
    forward(w, b, x, y)            -> {"a", "c", "d", "e", "dl_dd"}   (optional, for explain)

What it leaves out, sgdtrace's own engine does (:func:`sgdtrace.engines.manual.gradients`, the
optimizer's ``update``). The file runs in a child process (``python -m sgdtrace.engines.user``,
which never imports torch) that receives only the batches, the initial values and the
hyper-parameters, drives the parts with the protocol's loop and sends back the columns: the
user's code cannot reach torch's columns or the verdict, and :class:`UserEngine` stops it after
``timeout`` seconds. Each value the file returns is checked (a real scalar; a list, a tuple of
the wrong length, an array, None or a tensor is refused) and rounded once to the run's dtype.

A failure is :class:`EngineError`: one line naming the function, the step and what was wrong,
then the traceback's lines inside the user's file only.
"""

from __future__ import annotations

import difflib
import os
import pickle
import subprocess
import sys
import traceback
import types
from dataclasses import dataclass, field
from typing import Any

from sgdtrace.config import ENGINE_TIMEOUT as DEFAULT_TIMEOUT  # seconds, --engine-timeout
from sgdtrace.errors import SgdtraceError

#: the functions a file may define, in the order they are written
PARTS = ("gradients", "update", "forward")
#: the nodes ``forward`` returns (sgdtrace.engines.manual's names)
NODES = ("a", "c", "d", "e", "dl_dd")
SIGNATURES = {
    "gradients": "gradients(w, b, x, y) -> (loss, grad_w, grad_b)",
    "gradients_params": "gradients(params, x, y) -> (loss, grads)",
    "update": "update(param, grad, state, hp) -> new param",
    "forward": 'forward(w, b, x, y) -> {"a", "c", "d", "e", "dl_dd"}',
}


class EngineError(SgdtraceError):
    """The user's file failed: the message's first line says where and what, then its traceback lines."""


@dataclass
class EngineInfo:
    """The user's side of a trace: which file, which parts it wrote, what it did not keep."""

    name: str
    path: str
    parts: tuple[str, ...]
    not_kept: tuple[str, ...] = ()  # torch's state columns (buf_w, ...) the user's update does not keep
    forward: dict[str, Any] | None = None  # the user's nodes at the step explain asked for
    forward_step: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "parts": list(self.parts)}


@dataclass
class UserEngine:
    """A user's engine file, run in a child process (see the module's docstring)."""

    path: str
    timeout: float = DEFAULT_TIMEOUT
    forward_step: int | None = None  # 0-based step at which to call ``forward`` (explain)
    #: which of the file's functions stand for which part (``sgdtrace grade``: ``{"update":
    #: "adam_update"}``; a part mapped to None is sgdtrace's own); None: the parts by their names
    use: dict[str, str | None] | None = None
    info: EngineInfo | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.given = self.path  # as the user wrote it (shown, and in the JSON)
        self.path = os.path.abspath(self.path)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """The child's reply to ``request`` (see :func:`run_child`)."""
        return run_child(request, self.timeout, self.name)

    def run_columns(
        self, cfg, dataset, plan, state_keys: tuple[str, ...], model=None, reset: dict | None = None
    ) -> dict[str, Any]:
        """Run the file over ``plan`` in a child process; its columns by field.

        Columns of torch's state (``state_keys``) the user's update did not keep are left out and
        named in :attr:`info` (``not_kept``). ``model``: the run's (default: the data's).
        ``reset`` (``--judge step``): torch's columns; each step from the second on starts from
        torch's parameters and its state under torch's names (only those go to the child).
        """
        from sgdtrace.engines.protocol import model_for

        model = model or model_for(cfg, dataset.x)
        reply = self.call(self._request(cfg, dataset, plan, state_keys, model, reset))
        n_forward = None if self.forward_step is None else int(plan.indices(self.forward_step).size)
        parts, not_kept, forward = _checked_reply(reply, self.name, state_keys, n_forward, model.names)
        self.info = EngineInfo(self.name, self.given, parts, not_kept, forward, self.forward_step)
        lr = cfg.scheduler is not None
        return _checked_columns(
            reply["columns"], cfg.dtype, plan.n_steps, state_keys, self.info.not_kept, model.shapes, lr
        )

    def run_ddp_columns(
        self, cfg, dataset, dplan, state_keys: tuple[str, ...], model, reset: dict | None = None
    ) -> tuple[dict, dict]:
        """``--world-size N``: the file's gradients on every rank's batch, sgdtrace's all-reduce
        (:func:`sgdtrace.engines.ddp.run`), the file's update with the average; in a child process.

        Returns the step's columns and the ranks' own (``grad_<p>``, ``loss``, ``(steps, N, *shape)``).
        ``reset`` (``--judge step``): torch's rank-0 columns; as for :meth:`run_columns`."""
        import numpy as np

        from sgdtrace import dtypes

        request = self._request(cfg, dataset, dplan.global_plan(), state_keys, model, reset)
        request["dplan"] = dplan
        reply = self.call(request)
        parts, not_kept, _ = _checked_reply(reply, self.name, state_keys, None, model.names)
        self.info = EngineInfo(self.name, self.given, parts, not_kept, None, None)
        steps = dplan.rank_plan(0).n_steps
        lr = cfg.scheduler is not None
        columns = _checked_columns(reply["columns"], cfg.dtype, steps, state_keys, self.info.not_kept, model.shapes, lr)
        ranks = reply.get("ranks")
        want = {"grad_" + p: model.shapes[p] for p in model.names} | {"loss": ()}
        if not isinstance(ranks, dict) or set(ranks) != set(want):
            raise _invalid(self.name, "no per-rank columns")
        for f, col in ranks.items():
            shape = (steps, dplan.world_size, *want[f])
            if (
                not isinstance(col, np.ndarray)
                or col.shape != shape
                or col.dtype != np.dtype(dtypes.np_dtype(cfg.dtype))
            ):
                raise _invalid(self.name, f"per-rank column {f!r} is not {shape} {cfg.dtype}")
        return columns, ranks

    def _request(self, cfg, dataset, plan, state_keys: tuple[str, ...], model, reset: dict | None = None) -> dict:
        import numpy as np

        from sgdtrace.engines.optimizers import _fused

        return {
            "path": self.path,
            "config": cfg,
            "x": np.asarray(dataset.x, dtype=np.float64).reshape(len(dataset), -1),
            "y": dataset.y,
            "plan": plan,
            "features": model.features,
            "state_keys": tuple(state_keys),
            "forward_step": self.forward_step,
            # the fused 16-bit kernel's form, probed here (the child never imports torch)
            "fused_form": _fused.form(cfg),
            "reset": None if reset is None else _starts(reset, model.names, state_keys),
            "use": self.use,
        }


def _starts(reset: dict, names, state_keys) -> dict:
    """Of torch's columns, what a step starts from: the parameters and the state under torch's names."""
    from sgdtrace.engines.protocol import state_fields

    return {f: reset[f] for f in (*names, *state_fields(state_keys, tuple(names))) if f in reset}


def _invalid(name: str, what: str) -> EngineError:
    return EngineError(f"{name}: its process sent back an invalid reply: {what}")


def _names(reply: dict[str, Any], key: str, allowed: tuple[str, ...], name: str) -> tuple[str, ...]:
    """A list of distinct names, each one of ``allowed``."""
    value = reply.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _invalid(name, f"{key!r} is not a list of names")
    for v in value:
        if v not in allowed:
            among = f"not one of {', '.join(allowed)}" if allowed else "and this run keeps no optimizer state"
            raise _invalid(name, f"{key!r} lists {v!r}, {among}")
    if len(set(value)) != len(value):
        raise _invalid(name, f"{key!r} lists a name twice")
    return tuple(value)


def _checked_reply(
    reply: dict[str, Any], name: str, state_keys, n_forward: int | None, params=None
) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, Any] | None]:
    """The child's reply is input from the user's process, like a file: the parts it ran (among
    :data:`PARTS`), the state columns it did not keep (among torch's state columns of this run,
    never a parameter, a gradient or the loss) and the nodes ``forward`` gave (among
    :data:`NODES`, one float64 value per sample of the batch explained). Anything else is
    :class:`EngineError` (exit 2), before the judge reads any of it."""
    import numpy as np

    from sgdtrace.engines.protocol import state_fields

    parts = _names(reply, "parts", PARTS, name)
    if not parts:
        raise _invalid(name, "'parts' is empty")
    not_kept = _names(reply, "not_kept", state_fields(state_keys, *(() if params is None else (params,))), name)
    forward = reply.get("forward")
    if forward is not None:
        if not isinstance(forward, dict) or n_forward is None:
            raise _invalid(name, "'forward' was not asked for")
        for node, value in forward.items():
            if node not in NODES:
                raise _invalid(name, f"'forward' has a node {node!r}, not one of {', '.join(NODES)}")
            if not isinstance(value, np.ndarray) or value.shape != (n_forward,) or value.dtype != np.float64:
                raise _invalid(name, f"'forward' node {node!r} is not {n_forward} float64 values")
    return parts, not_kept, forward


def _checked_columns(
    columns: dict[str, Any], dtype: str, steps: int, state_keys, not_kept, shapes=None, lr: bool = False
) -> dict[str, Any]:
    """Exactly the expected columns, ``(steps, *shape)`` values in the run's dtype (whatever came
    back); the float64 ``lr`` column under a schedule."""
    import numpy as np

    from sgdtrace import dtypes
    from sgdtrace.engines.protocol import LR, PARAMS, _param_of, fields_for

    shapes = shapes if shapes is not None else {p: () for p in PARAMS}
    out = {}
    want = dtypes.np_dtype(dtype)
    for f in fields_for(state_keys, tuple(shapes)):
        if f in not_kept:
            continue
        col = columns.get(f)
        shape = (steps, *shapes.get(_param_of(f, shapes), ()))
        if col is None or col.shape != shape or col.dtype != want:
            raise EngineError(f"the engine's process sent back no valid column {f!r}")
        out[f] = col
    if lr:
        col = columns.get(LR)
        if col is None or col.shape != (steps,) or col.dtype != np.float64:
            raise EngineError(f"the engine's process sent back no valid column {LR!r}")
        out[LR] = col
    return out


def hyper_parameters(cfg, group: dict | None = None) -> dict[str, Any]:
    """torch.optim's keyword arguments of ``cfg``'s optimizer, as Python floats, bools and tuples;
    ``group``: what a schedule sets for one step (``lr``, and ``momentum`` or ``beta1``)."""
    group = group or {}
    lr = float(group.get("lr", cfg.lr))
    opt = cfg.optimizer
    if opt in ("adam", "adamw"):
        beta1 = float(group.get("beta1", cfg.betas[0]))
        return {
            "lr": lr,
            "betas": (beta1, float(cfg.betas[1])),
            "eps": float(cfg.eps),
            "weight_decay": float(cfg.weight_decay),
            "amsgrad": bool(cfg.amsgrad),
            "maximize": bool(cfg.maximize),
            # torch.optim.Adam's own name for AdamW's rule (AdamW is Adam with it set)
            "decoupled_weight_decay": opt == "adamw",
        }
    if opt == "rmsprop":
        return {
            "lr": lr,
            "alpha": float(cfg.alpha),
            "eps": float(cfg.eps),
            "weight_decay": float(cfg.weight_decay),
            "momentum": float(group.get("momentum", cfg.momentum)),
            "centered": bool(cfg.centered),
            "maximize": bool(cfg.maximize),
        }
    if opt == "adagrad":
        return {
            "lr": lr,
            "lr_decay": float(cfg.lr_decay),
            "weight_decay": float(cfg.weight_decay),
            "initial_accumulator_value": float(cfg.initial_accumulator_value),
            "eps": float(cfg.eps),
            "maximize": bool(cfg.maximize),
        }
    return {
        "lr": lr,
        "momentum": float(group.get("momentum", cfg.momentum)),
        "dampening": float(cfg.dampening),
        "weight_decay": float(cfg.weight_decay),
        "nesterov": bool(cfg.nesterov),
        "maximize": bool(cfg.maximize),
    }


def step_hyper_parameters(cfg, plan) -> tuple[list[dict[str, Any]], Any]:
    """The hyper-parameters a user's update is given: one dict per schedule position and, per
    step, the position it runs at (None without a schedule: one dict for every step)."""
    if cfg.scheduler is None:
        return [hyper_parameters(cfg)], None
    from sgdtrace.engines.optimizers import schedules

    rows = schedules.values(cfg, schedules.calls(cfg, plan))
    return [hyper_parameters(cfg, row) for row in rows], schedules.index_of_step(cfg, plan)


def run_child(request: dict[str, Any], timeout: float, name: str) -> dict[str, Any]:
    """Send ``request`` to ``python -m sgdtrace.engines.user``; its reply, or :class:`EngineError`."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # its own process group, so that stopping it stops whatever the user's code started too
    proc = subprocess.Popen(
        [sys.executable, "-m", "sgdtrace.engines.user"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        start_new_session=os.name == "posix",
    )
    try:
        out, _ = proc.communicate(pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL), timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        raise EngineError(
            f"{name}: still running after {timeout:g} s: stopped (an endless loop? "
            f"--engine-timeout SECONDS allows more time)"
        ) from None
    except BaseException:  # Ctrl-C included: the child never outlives the run
        _stop(proc)
        raise
    try:
        reply = _decode(out)
    except Exception:
        raise EngineError(
            f"{name}: its process ended without a result (exit code {proc.returncode}); "
            "does the file call os._exit or crash the interpreter?"
        ) from None
    if not reply.get("ok"):
        raise EngineError(str(reply.get("message")))
    return reply


# The reply travels as a NumPy .npz archive read with allow_pickle=False: plain numbers and one
# JSON text, nothing the parent would execute (a pickle from the user's process could run code
# in the parent, and so forge the verdict).


#: the reply's arrays by their key's prefix in the ``.npz`` file
_GROUPS = {"columns": "col", "forward": "node", "ranks": "rank"}


def _encode(reply: dict[str, Any]) -> bytes:
    import io
    import json

    import numpy as np

    arrays = {}
    for group, prefix in _GROUPS.items():
        for f, v in (reply.get(group) or {}).items():
            v = np.asarray(v)
            if v.dtype.name == "bfloat16":  # not a dtype .npy files read back: its bits, as uint16
                arrays[f"{prefix}16:{f}"] = v.view(np.uint16)
            else:
                arrays[f"{prefix}:{f}"] = v
    meta = {k: v for k, v in reply.items() if k not in _GROUPS}
    meta["has_forward"] = reply.get("forward") is not None
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps(meta)), **arrays)
    return buf.getvalue()


def _decode(data: bytes) -> dict[str, Any]:
    import io
    import json

    import numpy as np

    from sgdtrace import dtypes

    groups: dict[str, dict[str, Any]] = {group: {} for group in _GROUPS}
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        reply = json.loads(str(npz["meta"]))
        for group, prefix in _GROUPS.items():
            for k in npz.files:
                head, _, f = k.partition(":")
                if head == prefix:
                    groups[group][f] = npz[k]
                elif head == prefix + "16" and npz[k].dtype == np.uint16:
                    groups[group][f] = npz[k].view(dtypes.np_dtype("bfloat16"))
    reply["columns"] = groups["columns"]
    if groups["ranks"]:
        reply["ranks"] = groups["ranks"]
    reply["forward"] = groups["forward"] if reply.pop("has_forward", False) else None
    return reply


def _stop(proc: subprocess.Popen) -> None:
    """Kill the child (and its process group, where it has one) and reap it."""
    import signal

    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover
            proc.kill()
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.communicate()


# ------------------------------------------------------------------ the child process


class _Failure(Exception):
    """What the child reports instead of columns."""


class Hyper(types.SimpleNamespace):
    """The optimizer's hyper-parameters by torch's keyword names: ``hp.lr``, ``hp.momentum``, ..."""


def _shown(path: str) -> str:
    """The file as a message names it: relative to the working folder when inside it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _user_frames(tb, path: str) -> str:
    """The traceback's lines inside the user's file only (none of sgdtrace's frames)."""
    frames = [f for f in traceback.extract_tb(tb) if os.path.abspath(f.filename) == path]
    for f in frames:
        f.filename = _shown(path)
    return "".join(traceback.format_list(frames)).rstrip("\n")


def _with_frames(line: str, frames: str) -> str:
    return line + ("\n" + frames if frames else "")


def _describe(value: Any) -> str:
    """What a wrong return was, in a learner's words."""
    kind = type(value)
    if value is None:
        return "None"
    if kind.__module__.split(".")[0] == "torch":
        return f"a torch {kind.__name__} (return a NumPy scalar or a Python float: tensor.item())"
    if isinstance(value, bool):
        return f"a bool ({value})"
    if isinstance(value, (list, tuple)):
        return f"a {kind.__name__} of {len(value)} values"
    shape = getattr(value, "shape", None)
    if shape is not None and kind.__module__.split(".")[0] == "numpy":
        what = "a complex number" if getattr(value, "dtype", None) is not None and value.dtype.kind == "c" else None
        if what:
            return what
        return f"a NumPy array of shape {tuple(shape)}" if shape != () else f"a NumPy {value.dtype} value"
    if isinstance(value, complex):
        return "a complex number"
    return f"a {kind.__name__}"


def _real(value: Any) -> bool:
    """A real scalar: a Python int or float, or a NumPy integer or float scalar (0-d arrays too)."""
    import numpy as np

    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, (int, float)):
        return True
    if isinstance(value, (np.floating, np.integer)):
        return True
    if isinstance(value, np.generic):  # an ml_dtypes scalar (bfloat16)
        return _real_dtype(value.dtype)
    return isinstance(value, np.ndarray) and value.shape == () and _real_dtype(value.dtype)


def _real_dtype(dtype) -> bool:
    """NumPy's integer and float types, and ml_dtypes' bfloat16."""
    return dtype.kind in "fiu" or dtype.name == "bfloat16"


def _arity(fn) -> int | None:
    """How many positional arguments ``fn`` takes (None: ``*args``, or not introspectable)."""
    import inspect

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    kinds = [p.kind for p in sig.parameters.values()]
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return None
    return sum(k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) for k in kinds)


class _Runner:
    """The user's parts wrapped: each call counted, each return checked and rounded once."""

    def __init__(self, module, path: str, request: dict[str, Any], hand, model):
        import numpy as np

        from sgdtrace import dtypes

        self.path = path
        self.np = np
        cfg = request["config"]
        self.dtype = dtypes.np_dtype(cfg.dtype)
        plan = request["plan"]
        self.spe = max(1, plan.steps_per_epoch)
        self.step = 0  # 1-based step being computed
        self.calls = 0  # gradients calls: one per step, or one per rank and step under --world-size
        self.world = 1
        self.keys = request["state_keys"]
        self.forward_step = request["forward_step"]
        self.forward_nodes = None
        use = request.get("use")
        if use is None:
            self.user = {p: getattr(module, p) for p in PARTS if callable(getattr(module, p, None))}
        else:  # sgdtrace grade: the functions a part names, the others sgdtrace's own
            self.user = {p: getattr(module, fn) for p, fn in use.items() if fn is not None}
        self.parts = tuple(p for p in PARTS if p in self.user)
        self.names = model.names
        self.shapes = model.shapes
        self.article = hand.article_form
        rows, self.where = step_hyper_parameters(cfg, plan)
        self.hps = [Hyper(**row) for row in rows]
        self._own_gradients = hand.gradients
        self._own_update = hand.update
        self.user_state: dict[int, dict] = {}  # the user's own state dict per parameter (by the protocol's dict)
        self.order: dict[int, int] = {}  # the protocol's state dict -> the parameter's position
        # per torch state key and parameter: was it kept at some step / missing at some step
        self.seen: dict[tuple[str, int], bool] = {}
        self.step_mode = request.get("reset") is not None  # --judge step: the state restarts from torch's
        self.general = False  # gradients(params, x, y)
        if "gradients" in self.user:
            arity = _arity(self.user["gradients"])
            name = os.path.basename(path)
            if arity == 3:
                self.general = True
            elif arity == 4 and not self.article:
                D = model.features
                raise _Failure(
                    f"{name}: gradients(w, b, x, y) is the article's form (one x column, scalar w and b); "
                    f"this run's model has {D} features: write {SIGNATURES['gradients_params']}"
                )
            elif arity != 4:
                raise _Failure(
                    f"{name}: gradients takes {arity if arity is not None else 'any number of'} arguments: "
                    f"write {SIGNATURES['gradients_params']}, or {SIGNATURES['gradients']} for the article's model"
                )

    # -- where and what

    def where_text(self) -> str:
        e, j = divmod(self.step - 1, self.spe)
        rank = f", rank {(self.calls - 1) % self.world}" if self.world > 1 else ""
        return f"step {self.step} (epoch {e + 1}, batch {j + 1}{rank})"

    def fail_call(self, part: str, exc: BaseException) -> _Failure:
        frames = _user_frames(exc.__traceback__, self.path)
        if isinstance(exc, NotImplementedError) and part in self.user:
            line = (
                f"{os.path.basename(self.path)}: {part} is not written yet (it raises NotImplementedError): "
                f"write {part} first ({SIGNATURES[part]})"
            )
            return _Failure(_with_frames(line, frames))
        text = str(exc)
        if isinstance(exc, SystemExit):
            text = f"the file called sys.exit({exc.code!r})"
        line = f"{part} raised {type(exc).__name__} at {self.where_text()}" + (f": {text}" if text else "")
        return _Failure(_with_frames(line, frames))

    def fail_return(self, part: str, what: str, expected: str) -> _Failure:
        fn = self.user[part]
        code = getattr(fn, "__code__", None)
        frame = f'  File "{_shown(self.path)}", line {code.co_firstlineno}, in {part}' if code else ""
        return _Failure(_with_frames(f"{part} returned {what} at {self.where_text()}: expected {expected}", frame))

    def scalar(self, part: str, value: Any, name: str):
        if not _real(value):
            raise self.fail_return(part, f"{_describe(value)} for {name}", "a real scalar (a float)")
        return self.dtype.type(value)

    def value(self, part: str, value: Any, name: str, shape: tuple[int, ...]):
        """A value of ``shape`` (a parameter's), rounded once to the run's dtype."""
        if self.article and shape == ():
            return self.scalar(part, value, name)
        np = self.np
        if shape == () and _real(value):
            return np.asarray(value).astype(self.dtype)
        if not isinstance(value, np.ndarray) or not _real_dtype(value.dtype) or value.shape != shape:
            raise self.fail_return(part, f"{_describe(value)} for {name}", f"a NumPy array of shape {shape}")
        return value.astype(self.dtype)

    def call(self, part: str, *args):
        try:
            return self.user[part](*args)
        except BaseException as exc:  # the user's code: anything it raises is reported, nothing escapes
            raise self.fail_call(part, exc) from None

    def hp(self, name: str) -> Hyper:
        """The step's hyper-parameters (torch's names, the scheduled lr), ``hp.param`` naming the parameter."""
        hp = self.hps[0 if self.where is None else int(self.where[self.step - 1])]
        hp.param = name
        return hp

    # -- the protocol's parts

    def gradients(self, *args):
        self.calls += 1  # one per step, or one per rank and step under --world-size
        self.step = (self.calls - 1) // self.world + 1
        if self.article:
            w, b, x, y = args
            if self.forward_step is not None and self.step - 1 == self.forward_step and "forward" in self.user:
                self.forward_nodes = self.nodes(w, b, x, y)
        if "gradients" not in self.user:
            return self._own_gradients(*args)
        if self.article and not self.general:
            out = self.call("gradients", *args)
            if not isinstance(out, tuple) or len(out) != 3:
                raise self.fail_return(
                    "gradients", _describe(out), "a tuple (loss, grad_w, grad_b) of three real scalars"
                )
            return tuple(self.scalar("gradients", v, name) for v, name in zip(out, ("loss", "grad_w", "grad_b")))
        if self.article:  # gradients(params, x, y) on the article's model: x (n, 1), scalar w and b
            w, b, x, y = args
            params, x = {"w": w, "b": b}, x.reshape(-1, 1)
        else:
            params, x, y = args
            params = {p: v.copy() for p, v in params.items()}  # the user's code may write into them
        out = self.call("gradients", params, x, y)
        names = ", ".join(self.names)
        expected = f"a tuple (loss, grads): a real scalar and a dict of {names}"
        if not isinstance(out, tuple) or len(out) != 2 or not isinstance(out[1], dict):
            raise self.fail_return("gradients", _describe(out), expected)
        loss, grads = out
        loss = self.scalar("gradients", loss, "loss")
        for p in grads:
            if p not in self.shapes:
                raise self.fail_return("gradients", f"a gradient for {p!r}", f"gradients of {names} only")
        for p in self.names:
            if p not in grads:
                raise self.fail_return("gradients", f"no gradient for {p!r}", expected)
        grads = {p: self.value("gradients", grads[p], f"grads[{p!r}]", self.shapes[p]) for p in self.names}
        if self.article:
            return loss, grads["w"], grads["b"]
        return loss, grads

    def update(self, param, grad, state: dict, hp):
        if "update" not in self.user:
            return self._own_update(param, grad, state, hp)
        key = id(state)
        which = self.order.setdefault(key, len(self.order))  # the loop updates the parameters in order
        name = self.names[which]
        mine = self.user_state.setdefault(key, {})
        copy = (lambda v: v.copy()) if isinstance(param, self.np.ndarray) else (lambda v: v)
        if self.step_mode:  # the step starts from torch's state under torch's names, those the file keeps
            mine.update({k: copy(state[k]) for k in self.keys if k in state and self.seen.get((k, which))})
        new = self.call("update", copy(param), copy(grad), mine, self.hp(name))
        if isinstance(new, tuple) and len(new) == 2 and isinstance(new[1], dict):
            raise self.fail_return(
                "update", _describe(new), "the new parameter alone (keep the state in the dict update was given)"
            )
        shape = self.shapes[name]
        new = self.value("update", new, "the new parameter", shape)
        for k in self.keys:
            if k in mine:
                state[k] = self.value("update", mine[k], f"state[{k!r}]", shape)
                self.seen[(k, which)] = True
            else:
                state[k] = self.np.full(shape, self.np.nan).astype(self.dtype) if shape else self.dtype.type("nan")
                self.seen.setdefault((k, which), False)
        return new

    def nodes(self, w, b, x, y) -> dict[str, Any] | None:
        try:
            out = self.user["forward"](w, b, x, y)
        except NotImplementedError:  # the template's optional forward, not written: as if absent
            self.parts = tuple(p for p in self.parts if p != "forward")
            return None
        except BaseException as exc:
            raise self.fail_call("forward", exc) from None
        if not isinstance(out, dict):
            raise self.fail_return("forward", _describe(out), f"a dict of the nodes {', '.join(NODES)}")
        nodes = {}
        for name in NODES:
            if name not in out:
                continue
            value = out[name]
            if type(value).__module__.split(".")[0] == "torch":
                raise self.fail_return("forward", f"{_describe(value)} for {name!r}", "NumPy values")
            try:
                arr = self.np.asarray(value).astype(self.dtype).astype(self.np.float64)
            except (TypeError, ValueError):
                raise self.fail_return(
                    "forward", f"{_describe(value)} for {name!r}", f"{len(x)} real values, one per sample"
                ) from None
            if arr.shape == ():
                arr = self.np.full(len(x), float(arr))
            if arr.shape != (len(x),):
                raise self.fail_return(
                    "forward", f"{_describe(value)} for {name!r}", f"{len(x)} values, one per sample"
                )
            nodes[name] = arr
        return nodes


def load_module(path: str, use: dict | None = None):
    """Import the user's file; :class:`_Failure` for a syntax error, a failing import or no parts.
    ``use``: the functions that stand for the parts (each must be defined), in place of the part names."""
    import importlib.util

    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise _Failure(f"--engine {path!r}: no such file")
    stem = os.path.splitext(name)[0]
    spec = importlib.util.spec_from_file_location(stem if stem.isidentifier() else "user_engine", path)
    if spec is None or spec.loader is None:
        raise _Failure(f"--engine {path!r}: not a Python file (name it FILE.py)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module.__name__] = module
    sys.path.insert(0, os.path.dirname(path))  # the file may import its neighbours
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        text = (exc.text or "").rstrip("\n")
        where = f"line {exc.lineno}" + (f", column {exc.offset}" if exc.offset else "")
        raise _Failure(
            f"{name}: syntax error at {where}: {exc.msg}"
            + (f'\n  File "{_shown(path)}", line {exc.lineno}\n    {text.strip()}' if text else "")
        ) from None
    except BaseException as exc:
        what = type(exc).__name__ + (f": {exc}" if str(exc) else "")
        raise _Failure(
            _with_frames(
                f"{name}: raised {what} while loading (before any step)", _user_frames(exc.__traceback__, path)
            )
        ) from None
    defined = {k for k, v in vars(module).items() if callable(v) and getattr(v, "__module__", None) == module.__name__}
    if use is not None:
        for part, fn in use.items():
            if fn is not None and not callable(getattr(module, fn, None)):
                raise _Failure(f"{name}: defines no function {fn} (the {part} part of this assignment)")
        return module
    for have in sorted(defined):
        if have in PARTS:
            continue
        close = difflib.get_close_matches(have, [p for p in PARTS if p not in defined], n=1, cutoff=0.75)
        if close:
            raise _Failure(
                f"{name}: defines {have!r}, which is not a part sgdtrace calls: did you mean "
                f"{close[0]!r}? ({SIGNATURES[close[0]]})"
            )
    for part in PARTS:
        if part in vars(module) and not callable(vars(module)[part]):
            raise _Failure(
                f"{name}: {part} is a {type(vars(module)[part]).__name__}, not a function ({SIGNATURES[part]})"
            )
    if not {"gradients", "update"} & defined and not any(callable(getattr(module, p, None)) for p in PARTS[:2]):
        raise _Failure(
            f"{name}: defines neither gradients nor update: write at least one of "
            f"{SIGNATURES['gradients']}, {SIGNATURES['update']}"
        )
    return module


def serve(request: dict[str, Any]) -> dict[str, Any]:
    """The child's work: load the file, run the protocol's loop with its parts, return the columns."""
    import dataclasses

    from sgdtrace import models
    from sgdtrace.engines import manual, protocol
    from sgdtrace.engines.optimizers import _fused

    path = request["path"]
    module = load_module(path, request.get("use"))
    cfg = request["config"]
    if request.get("fused_form") is not None:  # probed by the parent (this process imports no torch)
        form = request["fused_form"]
        _fused.form = lambda config: form
    model = models.build(cfg, request["features"])
    backend = manual.ArrayBackend("numpy", cfg.dtype)
    plan = request["plan"]
    hand = manual.engine(cfg, backend, plan, model)
    runner = _Runner(module, path, request, hand, model)
    engine = dataclasses.replace(hand, name=os.path.basename(path), gradients=runner.gradients, update=runner.update)
    initial = model.module.initial(cfg, model)
    ranks = None
    if request.get("dplan") is not None:  # --world-size N: every rank's gradients, sgdtrace's all-reduce
        import numpy as np

        from sgdtrace.engines import ddp

        runner.world = request["dplan"].world_size
        columns, ranks = ddp.run(
            engine, request["x"], request["y"], request["dplan"], initial, backend, reset=request.get("reset")
        )
        columns["loss"] = ranks["loss"].astype(np.float64).mean(axis=1).astype(ranks["loss"].dtype)
    else:
        columns = protocol.run(engine, request["x"], request["y"], plan, initial, backend, reset=request.get("reset"))
    not_kept = []
    if "update" in runner.parts:
        for key in request["state_keys"]:
            for i, p in enumerate(model.names):
                if not runner.seen.get((key, i), False):
                    f = protocol.state_field(key, p)
                    not_kept.append(f)
                    columns.pop(f, None)
    return {
        "ok": True,
        "columns": columns,
        "parts": list(runner.parts),
        "not_kept": not_kept,
        "forward": runner.forward_nodes,
        **({"ranks": ranks} if ranks is not None else {}),
    }


def main() -> None:
    """``python -m sgdtrace.engines.user``: a pickled request on stdin, the reply (:func:`_encode`) on stdout.

    The user's prints go to stderr (fd 1 is pointed there), so they cannot corrupt the reply.
    """
    request = pickle.load(sys.stdin.buffer)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        reply = serve(request)
    except _Failure as exc:
        reply = {"ok": False, "message": str(exc)}
    out.write(_encode(reply))
    out.flush()
    os._exit(0)  # the user's atexit handlers and threads are none of our business


if __name__ == "__main__":
    main()
