"""One batch of the network (``--model mlp``) worked node by node and factor by factor: the
numbers ``sgdtrace explain`` shows for it.

Every number comes from the hand engine's own functions (:func:`sgdtrace.models.mlp.forward_backward`
on :func:`sgdtrace.models.mlp.hand_ops`, and the optimizer's ``update``), run at the parameters and
optimizer state the batch started from, in the run's dtype; :func:`explain_network` checks that
they equal the trace's columns bit for bit. Torch's values (the loss, each gradient, each updated
parameter) come from the trace, i.e. from the learner's own ``nn.Sequential`` loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sgdtrace.engines import manual
from sgdtrace.engines.protocol import state_field
from sgdtrace.models import mlp


def _array(v: Any) -> np.ndarray:
    return np.asarray(v).astype(np.float64)


@dataclass
class NetworkExplanation:
    """One batch of the network: its samples, every node and factor (float64 copies of the run's
    dtype's values), the gradients and the update per parameter, torch's values beside."""

    #: the network's form (the views dispatch on it; Explanation is "scalar", FeatureExplanation "vector")
    form = "network"
    trace: Any
    step: int  # 0-based global step
    epoch: int  # 1-based
    batch: int  # 1-based
    indices: np.ndarray
    x: np.ndarray  # (n, D)
    y: np.ndarray  # (n,)
    start: dict[str, np.ndarray]  # each parameter the batch started from
    nodes: dict[str, np.ndarray]  # z1, h (n, H); z2 (n, 1); delta2 (n,); dl_dh, act_prime, delta1 (n, H)
    loss: float
    grads: dict[str, np.ndarray]  # by parameter
    new: dict[str, np.ndarray]  # each parameter after the update
    state1: dict[str, np.ndarray]  # each state field after the step
    matches_trace: bool  # the recomputed values equal the manual trace's columns bit for bit
    # --engine FILE.py: the values above are sgdtrace's own at the parameters the user's file started
    # the step from; the file's own loss and gradients, each within the step's allowance of them or not
    user: dict[str, Any] | None = None
    user_name: str | None = None
    user_ok: dict[str, bool] | None = None
    rate: float = 0.0  # the step's learning rate (worked out by sgdtrace.teaching.explain for the view)

    @property
    def n(self) -> int:
        return int(self.indices.shape[0])

    @property
    def model(self):
        return self.trace.model

    @property
    def fields(self) -> list[str]:
        names = list(self.start)
        return ["loss", *(f"grad_{p}" for p in names), *names, *self.state1]

    @property
    def values(self) -> dict[str, Any]:
        return {"loss": self.loss, **{f"grad_{p}": g for p, g in self.grads.items()}, **self.new, **self.state1}

    def torch_value(self, field: str):
        return self.trace.torch[field][self.step].astype(np.float64)

    def ulp(self, field: str) -> int:
        """The largest distance in ulp over the field's elements."""
        return int(np.max(self.trace.divergence[field].ulp[self.step]))


def explain_network(trace, batch: int, epoch: int = 1) -> NetworkExplanation:
    """Recompute one step of the network with the hand engine's functions, from the trace's values
    before it, and check them against the trace bit for bit."""
    k = trace.plan.step(batch, epoch)
    cfg, model = trace.config, trace.model
    backend = manual.ArrayBackend("numpy", cfg.dtype)
    eng = manual.engine(cfg, backend, trace.plan, model)
    hp = eng.hp_at(k) if eng.hp_at is not None else eng.hp
    man = trace.manual
    names = model.names
    start = {p: trace.initial[p] if k == 0 else man[p][k - 1] for p in names}
    idx = trace.indices(k)
    xb = backend.asarray(model.module.inputs(model, trace.dataset.x[idx]))
    yb = backend.asarray(trace.dataset.y[idx])
    params = {p: backend.param(np.asarray(start[p], dtype=np.float64)) for p in names}
    ops = mlp.hand_ops(cfg.dtype)
    r = mlp.forward_backward(ops, params, xb, yb, model.activation, model.loss)
    states = {
        p: {key: backend.param(man[state_field(key, p)][k - 1].astype(np.float64)) for key in eng.state_keys if k > 0}
        for p in names
    }
    if k > 0:  # the optimizer's step count, as torch keeps it beside the state ("step")
        for st in states.values():
            st["step"] = k
    new = {p: eng.update(params[p], r.grads[p], states[p], hp) for p in names}
    state1 = {state_field(key, p): _array(states[p][key]) for key in eng.state_keys for p in names}
    got = {"loss": r.loss, **{f"grad_{p}": g for p, g in r.grads.items()}, **new}
    dtype = man["loss"].dtype
    matches = all(np.asarray(v).astype(dtype).tobytes() == man[f][k].tobytes() for f, v in got.items()) and all(
        np.asarray(v).astype(dtype).tobytes() == man[f][k].tobytes() for f, v in state1.items()
    )
    nodes = {
        "z1": r.z1,
        "h": r.h,
        "z2": r.z2,
        "delta2": r.delta2,
        "dl_dh": r.dl_dh,
        "act_prime": mlp.act_prime(ops, r.z1, r.h, model.activation),
        "delta1": r.delta1,
    }
    info = getattr(trace, "engine", None)
    user = user_ok = None
    if info is not None:  # the file's loss and gradients beside the ones worked out from its start
        fields = ["loss"] + [f"grad_{p}" for p in names]
        user = {f: man[f][k].astype(np.float64) for f in fields}
        user_ok = {
            f: bool(np.all(np.abs(user[f] - _array(got[f])) <= trace.divergence[f].tol[k]))
            for f in fields
            if f in trace.divergence
        }
        matches = True  # the parameters and state are the file's (the run's table judges its update)
    e, j = divmod(k, trace.plan.steps_per_epoch)
    return NetworkExplanation(
        trace,
        k,
        e + 1,
        j + 1,
        idx,
        _array(xb),
        _array(yb),
        {p: np.asarray(v, dtype=np.float64) for p, v in start.items()},
        {name: _array(v) for name, v in nodes.items()},
        float(_array(r.loss)),
        {p: _array(g) for p, g in r.grads.items()},
        {p: _array(v) for p, v in new.items()},
        state1,
        matches,
        user,
        None if info is None else info.name,
        user_ok,
    )


# ------------------------------------------------------------------ graph: beside torch's grad_fn graph


def network_dag(model):
    """The network's DAG, root first, each node with its backward function (matrix form)."""
    from sgdtrace.teaching.dag import ManualNode

    H, D = model.param("w1").shape
    act = model.activation
    loss = (
        ManualNode("l", "l = (1/n)·Σ (z2 − y)²", "δ2 = dl/dz2 = (2/n)(z2 − y)", ("z2", "y"))
        if model.loss == "mse"
        else ManualNode("l", "l = (1/n)·Σ [(1 − y)·z2 − log σ(z2)]", "δ2 = dl/dz2 = (σ(z2) − y)/n", ("z2", "y"))
    )
    prime = {"relu": "1 where z1 > 0", "tanh": "1 − h²", "sigmoid": "h·(1 − h)"}[act]
    return (
        ManualNode("z", "z = l", "dz/dl = 1", ("l",)),
        loss,
        ManualNode("z2", "z2 = h·W2ᵀ + b2 (n, 1)", "dl/dW2 = δ2ᵀ·h, dl/db2 = Σ δ2, dl/dh = δ2·W2", ("h", "W2", "b2")),
        ManualNode("h", f"h = {act}(z1) (n, {H})", f"δ1 = dl/dh ⊙ {act}'(z1), {act}'(z1) = {prime}", ("z1",)),
        ManualNode("z1", f"z1 = X·W1ᵀ + b1 (n, {H})", "dl/dW1 = δ1ᵀ·X, dl/db1 = Σ δ1", ("x", "W1", "b1")),
        ManualNode("W1", f"leaf (parameter, ({H}, {D}))", "accumulates dl/dW1"),
        ManualNode("b1", f"leaf (parameter, ({H},))", "accumulates dl/db1"),
        ManualNode("W2", f"leaf (parameter, (1, {H}))", "accumulates dl/dW2"),
        ManualNode("b2", "leaf (parameter, (1,))", "accumulates dl/db2"),
        ManualNode("x", f"leaf (input X, (n, {D}), no gradient)", "—"),
        ManualNode("y", "leaf (target, no gradient)", "—"),
    )


#: the activations' backward nodes in torch's graph
_ACT_NODES = {"ReluBackward0", "TanhBackward0", "SigmoidBackward0"}
_LOSS_NODES = {"MseLossBackward0", "BinaryCrossEntropyWithLogitsBackward0"}


def build_network_graph(trace, batch: int = 1, epoch: int = 1):
    """torch's real graph of the learner's ``nn.Sequential`` on one batch (walked from
    ``loss.grad_fn``, a hook on every node recording the gradient flowing into it), each node beside
    the network's node it computes and the hand engine's gradient there."""
    import torch

    from sgdtrace import models
    from sgdtrace.divergence import _cast, ulp_distance
    from sgdtrace.teaching.dag import GraphResult, TorchNode

    k = trace.plan.step(batch, epoch)
    cfg, spec = trace.config, trace.model
    side = models.torch_side(spec)
    dtype = getattr(torch, cfg.dtype)
    device = torch.device(trace.device)
    start = {p: trace.initial[p] if k == 0 else trace.torch[p][k - 1].astype(np.float64) for p in spec.names}
    idx = trace.indices(k)
    data, target = side.tensors(
        spec,
        torch.as_tensor(trace.dataset.x[idx], dtype=dtype).to(device),
        torch.as_tensor(trace.dataset.y[idx], dtype=dtype).to(device),
    )
    net = side.module(spec, start, dtype, device)
    label = {p.torch_name: p.label for p in spec.params}
    leaf = {id(t): label[name] for name, t in net.named_parameters()}
    out = side.criterion(spec.loss)(net(data), target)

    nodes: list[TorchNode] = []
    linears = iter(("z2", "z1"))  # walked from the loss: the output layer's addmm first

    def walk(fn, depth: int) -> int:
        name = type(fn).__name__
        if name == "AccumulateGrad":
            maps: tuple[str, ...] = (leaf[id(fn.variable)],)
        elif name == "AddmmBackward0":
            maps = (next(linears, ""),)
        elif name in _ACT_NODES:
            maps = ("h",)
        elif name in _LOSS_NODES:
            maps = ("l",)
        else:
            maps = ()
        i = len(nodes)
        node = TorchNode(name, depth, tuple(m for m in maps if m))
        nodes.append(node)

        def hook(grad_inputs, grad_outputs, node=node):
            node.grad = grad_outputs[0].detach().to("cpu", torch.float64).numpy().reshape(-1).copy()

        fn.register_hook(hook)
        for child, _ in fn.next_functions:
            if child is not None:
                node.children.append(walk(child, depth + 1))
        return i

    walk(out.grad_fn, 0)
    out.backward()

    ex = explain_network(trace, batch, epoch)
    grads = {
        "l": np.array([1.0]),
        "z2": ex.nodes["delta2"].reshape(-1),
        "h": ex.nodes["dl_dh"].reshape(-1),
        "z1": ex.nodes["delta1"].reshape(-1),
        **{p.label: ex.grads[p.name].reshape(-1) for p in spec.params},
    }
    ulps: list[int | None] = []
    for node in nodes:
        at = node.maps_to[0] if node.maps_to else None
        if at is None or node.grad is None or at not in grads:
            ulps.append(None)
            continue
        m = _cast(np.asarray(grads[at], dtype=np.float64), cfg.dtype)
        t = _cast(np.asarray(node.grad, dtype=np.float64), cfg.dtype)
        ulps.append(int(ulp_distance(m, t).max()) if m.shape == t.shape else None)

    covered = sorted(m for node in nodes for m in node.maps_to)
    expected = sorted(["l", "z2", "h", "z1", "W1", "b1", "W2", "b2"])
    ok = covered == expected
    if ok:
        loss_node = next(n.name for n in nodes if n.name in _LOSS_NODES)
        note = (
            "every node of the network has its torch counterpart: "
            f"{loss_node} computes the loss, each nn.Linear is one AddmmBackward0 (z = addmm(b, input, Wᵀ)), "
            f"{next(n.name for n in nodes if n.name in _ACT_NODES)} is {spec.activation}'s backward; "
            "TBackward0 is each weight's transpose"
        )
    else:
        note = f"torch's graph covers {covered}; expected {expected}"
    result = GraphResult(spec.loss, nodes, grads, ulps, ok, note, k, epoch, batch, trace, network_dag(spec))
    result.title = "The network's DAG, in matrix form (manual)"
    result.criterion = mlp.TORCH_LOSS[spec.loss]
    return result
