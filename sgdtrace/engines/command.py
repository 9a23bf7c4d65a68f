"""An engine in any language: a process that speaks JSON lines (``--engine-cmd "COMMAND"``).

sgdtrace starts ``COMMAND`` once per run (its arguments split as a shell would, no shell) and
drives the engine protocol's loop itself, asking the process for the parts it implements. One
JSON object per line each way:

* ``{"op": "start", "model", "optimizer", "dtype", "params": {name: shape}}`` ->
  ``{"parts": ["gradients", "update"]}`` (the parts it implements; sgdtrace's own do the rest);
* ``{"op": "gradients", "step", "params": {name: value}, "x", "y"}`` ->
  ``{"loss", "grads": {name: value}}`` (``x`` is (n, D), ``y`` (n,));
* ``{"op": "update", "step", "param": name, "value", "grad", "state": {...}, "hp": {...}}`` ->
  ``{"value", "state": {...}}``: the state travels in the request and comes back in the reply
  (whatever the process keeps, under any names; torch's names are judged);
* ``{"op": "stop"}``, then the process exits.

A value is a JSON number or a (nested) list of the parameter's shape; sgdtrace writes numbers that
round-trip exactly (Python's shortest repr) and rounds each reply once to the run's dtype;
``"inf"``, ``"-inf"`` and ``"nan"`` are strings. A crash, a hang past ``--engine-timeout`` (for
the whole run), a malformed or wrong-shaped reply: :class:`sgdtrace.engines.user.EngineError`
(exit 2), one line naming the op and the step.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from sgdtrace.config import ENGINE_TIMEOUT as DEFAULT_TIMEOUT
from sgdtrace.engines.user import EngineError, EngineInfo, step_hyper_parameters

#: the parts a process may implement
PARTS = ("gradients", "update")
#: what a value in a reply may be besides a number
SPECIAL = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def encode(value) -> Any:
    """A NumPy value (any shape) as JSON: numbers that round-trip exactly, non-finite ones as strings."""
    import numpy as np

    arr = np.asarray(value, dtype=np.float64)

    def one(v: float):
        return v if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))

    if arr.ndim == 0:
        return one(float(arr))
    flat = [one(v) for v in arr.ravel().tolist()]
    if arr.ndim == 1:
        return flat
    return np.array(flat, dtype=object).reshape(arr.shape).tolist()


def _number(v) -> float:
    if isinstance(v, bool):
        raise ValueError("a bool")
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and v in SPECIAL:
        return SPECIAL[v]
    raise ValueError(f"{v!r} is not a number")


def decode(value, shape: tuple[int, ...]):
    """A reply's value as a float64 array of ``shape`` (ValueError saying what is wrong)."""
    import numpy as np

    if not shape:
        if isinstance(value, list):
            raise ValueError(f"a list where a number belongs (shape {list(shape)})")
        return np.float64(_number(value))

    def walk(v, depth: int):
        if depth == len(shape):
            return _number(v)
        if not isinstance(v, list) or len(v) != shape[depth]:
            raise ValueError(f"not a list of shape {list(shape)}")
        return [walk(e, depth + 1) for e in v]

    return np.array(walk(value, 0), dtype=np.float64).reshape(shape)


class _Lines:
    """Lines from a pipe, each read against the run's deadline."""

    def __init__(self, fd: int):
        self.fd, self.buf = fd, b""

    def readline(self, deadline: float) -> bytes | None:
        import select

        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                raise TimeoutError
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return None  # end of file: the process closed its output (or exited)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line


@dataclass
class CommandEngine:
    """``--engine-cmd "COMMAND"``: a process on the hand side (see the module's docstring)."""

    command: str
    timeout: float = DEFAULT_TIMEOUT
    #: the parts to take from the process (``sgdtrace grade``); None: every part it implements
    use: tuple[str, ...] | None = None
    info: EngineInfo | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.argv = shlex.split(self.command)
        # how messages name it: the command with each path's folders left out ("python3 engine.py")
        self.name = " ".join(os.path.basename(a) for a in self.argv) if self.argv else self.command
        if len(self.name) > 60:
            self.name = self.name[:57] + "..."
        self.path = self.command  # what the JSON names it by

    # -- the process

    def _start(self) -> None:
        self.err = tempfile.TemporaryFile()  # noqa: SIM115  (closed in _stop, after the run)
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self.err,
                start_new_session=os.name == "posix",
            )
        except OSError as exc:
            raise EngineError(f"--engine-cmd {self.command!r}: cannot start it ({exc.strerror or exc})") from None
        self.lines = _Lines(self.proc.stdout.fileno())
        self.deadline = time.monotonic() + self.timeout

    def _stop(self) -> None:
        import signal

        proc = getattr(self, "proc", None)
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL) if os.name == "posix" else proc.kill()
            except (ProcessLookupError, PermissionError):
                proc.kill()
        for pipe in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()
        proc.wait()
        self.err.close()

    def _last_error_line(self) -> str:
        try:
            self.err.seek(0)
            lines = [ln for ln in self.err.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        except (OSError, ValueError):
            return ""
        return f"; its last line on stderr: {lines[-1].strip()[:200]}" if lines else ""

    def ask(self, request: dict[str, Any], where: str) -> dict[str, Any]:
        """Send one request; its reply (a JSON object), or :class:`EngineError` naming the op and step."""
        op = request["op"]
        head = f"{self.name}: op {op!r}{where}"
        try:
            self.proc.stdin.write(json.dumps(request, separators=(",", ":")).encode() + b"\n")
            self.proc.stdin.flush()
            line = self.lines.readline(self.deadline)
        except TimeoutError:
            raise EngineError(
                f"{head}: no reply after {self.timeout:g} s: stopped (an endless loop, or output not flushed? "
                "--engine-timeout SECONDS allows more time)"
            ) from None
        except (BrokenPipeError, OSError):
            line = None
        if line is None:
            code = self.proc.wait(timeout=5) if self.proc.poll() is None else self.proc.returncode
            raise EngineError(f"{head}: the process exited (code {code}) without a reply{self._last_error_line()}")
        try:
            reply = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            text = line[:80].decode("utf-8", "replace")
            raise EngineError(f"{head}: the reply is not JSON: {text!r}") from None
        if not isinstance(reply, dict):
            raise EngineError(f"{head}: the reply is a {type(reply).__name__}, not a JSON object")
        if "error" in reply:
            raise EngineError(f"{head}: the process reported an error: {str(reply['error'])[:200]}")
        return reply

    # -- the run

    def run_columns(
        self, cfg, dataset, plan, state_keys: tuple[str, ...], model=None, reset: dict | None = None
    ) -> dict[str, Any]:
        """Run the process over ``plan``; its columns by field (torch's state it did not keep left
        out and named in :attr:`info`, as for a Python file). ``reset`` (``--judge step``): torch's
        columns; each step starts from torch's parameters, and the state the request carries from
        torch's state under torch's names (the process's other entries go on as it sent them)."""
        import dataclasses

        import numpy as np

        from sgdtrace import dtypes
        from sgdtrace.engines import manual, protocol
        from sgdtrace.engines.protocol import model_for

        model = model or model_for(cfg, dataset.x)
        backend = manual.ArrayBackend("numpy", cfg.dtype)
        hand = manual.engine(cfg, backend, plan, model)
        dtype = dtypes.np_dtype(cfg.dtype)
        shapes = model.shapes
        names = model.names
        rows, where = step_hyper_parameters(cfg, plan)
        spe = max(1, plan.steps_per_epoch)
        state = {"step": 0}
        kept: dict[tuple[str, int], bool] = {}
        own: dict[int, dict] = {}  # the process's state per parameter, as it last sent it
        order: dict[int, int] = {}

        def at() -> str:
            e, j = divmod(state["step"] - 1, spe)
            return f" at step {state['step']} (epoch {e + 1}, batch {j + 1})"

        def value(reply_value, shape, op: str, what: str):
            try:
                return decode(reply_value, shape).astype(dtype)
            except ValueError as exc:
                raise EngineError(f"{self.name}: op {op!r}{at()}: {what}: {exc}") from None

        def gradients(*args):
            state["step"] += 1
            if "gradients" not in parts:
                return hand.gradients(*args)
            if hand.article_form:
                w, b, x, y = args
                params, x = {"w": w, "b": b}, np.asarray(x).reshape(-1, 1)
            else:
                params, x, y = args
            reply = self.ask(
                {
                    "op": "gradients",
                    "step": state["step"],
                    "params": {p: encode(v) for p, v in params.items()},
                    "x": encode(x),
                    "y": encode(y),
                },
                at(),
            )
            grads = reply.get("grads")
            if "loss" not in reply or not isinstance(grads, dict):
                raise EngineError(f'{self.name}: op \'gradients\'{at()}: the reply lacks "loss" or "grads" (an object)')
            for p in grads:
                if p not in shapes:
                    raise EngineError(
                        f"{self.name}: op 'gradients'{at()}: a gradient for {p!r}, not one of {', '.join(names)}"
                    )
            missing = [p for p in names if p not in grads]
            if missing:
                raise EngineError(f"{self.name}: op 'gradients'{at()}: no gradient for {', '.join(missing)}")
            loss = value(reply["loss"], (), "gradients", "loss")
            g = {p: value(grads[p], shapes[p], "gradients", f"grads[{p!r}]") for p in names}
            if hand.article_form:
                return loss, g["w"], g["b"]
            return loss, g

        def update(param, grad, st: dict, hp):
            if "update" not in parts:
                return hand.update(param, grad, st, hp)
            which = order.setdefault(id(st), len(order))
            name = names[which]
            mine = own.setdefault(id(st), {})
            if reset is not None:  # torch's state at the step's start, under the names the process keeps
                mine.update({key: encode(st[key]) for key in state_keys if key in st and kept.get((key, which))})
            row = rows[0 if where is None else int(where[state["step"] - 1])]
            reply = self.ask(
                {
                    "op": "update",
                    "step": state["step"],
                    "param": name,
                    "value": encode(param),
                    "grad": encode(grad),
                    "state": mine,
                    "hp": {**row, "param": name},
                },
                at(),
            )
            if "value" not in reply or not isinstance(reply.get("state", {}), dict):
                raise EngineError(
                    f'{self.name}: op \'update\'{at()}: the reply lacks "value", or its "state" is not an object'
                )
            new = value(reply["value"], shapes[name], "update", "value")
            mine.clear()
            mine.update(reply.get("state", {}))
            for key in state_keys:
                if key in mine:
                    st[key] = value(mine[key], shapes[name], "update", f"state[{key!r}]")
                    kept[(key, which)] = True
                else:
                    st[key] = np.full(shapes[name], np.nan).astype(dtype) if shapes[name] else dtype.type("nan")
                    kept.setdefault((key, which), False)
            return new

        self._start()
        try:
            reply = self.ask(
                {
                    "op": "start",
                    "model": getattr(cfg, "model", "linear"),
                    "optimizer": cfg.optimizer,
                    "dtype": cfg.dtype,
                    "params": {p: list(shapes[p]) for p in names},
                },
                "",
            )
            parts = reply.get("parts")
            if not isinstance(parts, list) or not parts or not all(p in PARTS for p in parts):
                raise EngineError(
                    f"{self.name}: op 'start': the reply's \"parts\" must list some of "
                    f"{', '.join(PARTS)}, not {parts!r}"
                )
            if self.use is not None:
                missing = [p for p in self.use if p not in parts]
                if missing:
                    raise EngineError(f"{self.name}: op 'start': it implements no {' and no '.join(missing)}")
                parts = [p for p in parts if p in self.use]
            engine = dataclasses.replace(hand, name=self.name, gradients=gradients, update=update)
            initial = model.module.initial(cfg, model)
            columns = protocol.run(engine, dataset.x, dataset.y, plan, initial, backend, reset=reset)
            try:
                self.proc.stdin.write(b'{"op":"stop"}\n')
                self.proc.stdin.flush()
                self.proc.stdin.close()
                self.proc.wait(timeout=max(0.1, min(5.0, self.deadline - time.monotonic())))
            except (OSError, subprocess.TimeoutExpired):
                pass  # it had answered every step: stopped below
        finally:
            self._stop()
        not_kept = []
        if "update" in parts:
            for key in state_keys:
                for i, p in enumerate(names):
                    if not kept.get((key, i), False):
                        f = protocol.state_field(key, p)
                        not_kept.append(f)
                        columns.pop(f, None)
        self.info = EngineInfo(self.name, self.command, tuple(parts), tuple(not_kept))
        return columns
