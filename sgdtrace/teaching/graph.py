"""What ``sgdtrace graph`` shows: the article's forward DAG and backward functions beside torch's real autograd graph.

The manual DAG is the article's decomposition (leaves w, x, b, y; nodes a, c, d, e, l, z), each node
with its backward function. Torch's graph is not drawn from memory: the learner's model
(:class:`~sgdtrace.engines.torch_ref.LinearModel`) and loss are run on one batch and the graph is
walked from ``loss.grad_fn`` through ``next_functions``. A hook on every node records the gradient
that flows into it during ``loss.backward()``, so each torch node is put beside the manual node it
computes, with both gradients.

``nn.MSELoss`` fuses d, e and l into one node (MseLossBackward0); with ``loss="explicit"`` the model
computes ``((out - y) ** 2).mean()``, whose graph (SubBackward0, PowBackward0, MeanBackward0) matches
the article's decomposition one to one.
"""

from __future__ import annotations

import numpy as np

from sgdtrace.divergence import _cast, ulp_distance
from sgdtrace.teaching.dag import FEATURES_DAG, MANUAL_DAG, GraphResult, ManualNode, TorchNode  # noqa: F401

#: which manual node(s) each torch backward node computes; the first is the node whose output it is
TORCH_TO_MANUAL = {
    "AddmmBackward0": ("c", "a"),  # nn.Linear: addmm(bias, X, weightᵀ), a = X·w and c = a + b in one
    "MseLossBackward0": ("l", "e", "d"),
    "MeanBackward0": ("l",),
    "PowBackward0": ("e",),
    "SubBackward0": ("d",),
    "AddBackward0": ("c",),
    "MulBackward0": ("a",),
}


def build_graph(trace, batch: int = 1, epoch: int = 1, loss: str = "mse") -> GraphResult:
    """Build torch's graph for one batch of ``trace`` and map it, node by node, to the manual DAG."""
    import torch

    from sgdtrace import models
    from sgdtrace.engines import manual
    from sgdtrace.teaching.explain import explain_step

    if trace.model.name == "mlp":  # a network: its own DAG, layer by layer
        from sgdtrace.teaching.network import build_network_graph

        return build_network_graph(trace, batch, epoch)
    k = trace.plan.step(batch, epoch)
    cfg, spec = trace.config, trace.model
    side = models.torch_side(spec)
    dtype = getattr(torch, cfg.dtype)
    start = {p: trace.initial[p] if k == 0 else trace.torch[p][k - 1].astype(np.float64) for p in spec.names}
    idx = trace.indices(k)
    device = torch.device(trace.device)
    data, target = side.tensors(
        spec,
        torch.as_tensor(trace.dataset.x[idx], dtype=dtype).to(device),
        torch.as_tensor(trace.dataset.y[idx], dtype=dtype).to(device),
    )
    model = side.module(spec, start, dtype, device)
    leaf = {id(t): name for name, t in side.bindings(spec, model)}
    out = side.criterion(cfg.loss if loss == "mse" else loss)(model(data), target)
    own = getattr(spec.module, "graph", None)  # a model that declares its own DAG (logistic regression)
    mapping = own(cfg)["torch_to_manual"] if own is not None else TORCH_TO_MANUAL

    nodes: list[TorchNode] = []

    def walk(fn, depth: int) -> int:
        name = type(fn).__name__
        maps = (leaf[id(fn.variable)],) if name == "AccumulateGrad" else mapping.get(name, ())
        i = len(nodes)
        node = TorchNode(name, depth, maps)
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
    if own is not None:
        return _own_graph(trace, own(cfg), nodes, loss, k, epoch, batch, batch_step=(batch, epoch))

    ex = explain_step(trace, batch, epoch)
    n = ex.n
    up = ex.nodes["dl_dd"]
    features = not spec.scalar
    # dl/d(node) by the manual engine's own factors: dz/dl = 1, dl/de = 1/n, dl/dd = dl/dc = dl/da = 2d/n
    grads = {
        "l": np.array([1.0]),
        "e": np.full(n, manual.dl_de(n)),
        "d": up,
        "c": up,
        "a": up,
        "w": ex.grads["w"].reshape(-1) if features else np.array([ex.grad_w]),
        "b": ex.grads["b"].reshape(-1) if features else np.array([ex.grad_b]),
    }
    ulps: list[int | None] = []
    for node in nodes:
        target_node = node.maps_to[0] if node.maps_to else None
        if target_node is None or node.grad is None:
            ulps.append(None)
            continue
        m = _cast(np.asarray(grads[target_node], dtype=np.float64), cfg.dtype)
        t = _cast(np.asarray(node.grad, dtype=np.float64), cfg.dtype)
        if m.shape != t.shape:
            ulps.append(None)
            continue
        ulps.append(int(ulp_distance(m, t).max()))

    chain = [m for node in nodes if node.name != "AccumulateGrad" for m in node.maps_to]
    leaves = sorted(m for node in nodes if node.name == "AccumulateGrad" for m in node.maps_to)
    covered = sorted(set(chain))
    structure_ok = covered == ["a", "c", "d", "e", "l"] and leaves == ["b", "w"] and len(chain) == 5
    fused = [node for node in nodes if len(node.maps_to) > 1]
    if not structure_ok:
        note = f"torch's graph covers {covered} and leaves {leaves}; expected a, c, d, e, l and w, b"
    elif fused:

        def listed(names) -> str:
            names = sorted(names)
            return ", ".join(names[:-1]) + " and " + names[-1]

        what = "; ".join(f"{node.name} computes {listed(node.maps_to)} in one fused node" for node in fused)
        note = f"every manual node has its torch counterpart; {what}"
        if any(node.name == "TBackward0" for node in nodes):
            note += "; TBackward0 is the weight's transpose (weight (1, D) is wᵀ)"
    else:
        note = "one to one: every manual node a, c, d, e, l has exactly one torch node"
    dag = FEATURES_DAG if features else MANUAL_DAG
    return GraphResult(loss, nodes, grads, ulps, structure_ok, note, k, epoch, batch, trace, dag)


def _own_graph(trace, spec: dict, nodes: list[TorchNode], loss: str, k: int, epoch: int, batch: int, batch_step):
    """The graph of a model that declares its DAG (``graph(config)``: ``dag``, ``torch_to_manual``,
    ``expected``: the manual nodes torch's chain must cover, ``grads(ex)``: dl/d(node) from its
    explanation)."""
    from sgdtrace.teaching.explain import explain_features

    cfg = trace.config
    ex = explain_features(trace, *batch_step)
    grads = spec["grads"](ex)
    ulps: list[int | None] = []
    for node in nodes:
        target_node = node.maps_to[0] if node.maps_to else None
        if target_node is None or node.grad is None or target_node not in grads:
            ulps.append(None)
            continue
        m = _cast(np.asarray(grads[target_node], dtype=np.float64).reshape(-1), cfg.dtype)
        t = _cast(np.asarray(node.grad, dtype=np.float64).reshape(-1), cfg.dtype)
        ulps.append(int(ulp_distance(m, t).max()) if m.shape == t.shape else None)
    chain = [m for node in nodes if node.name != "AccumulateGrad" for m in node.maps_to]
    leaves = sorted(m for node in nodes if node.name == "AccumulateGrad" for m in node.maps_to)
    expected = sorted(spec["expected"])
    structure_ok = sorted(set(chain)) == expected and leaves == ["b", "w"] and len(chain) == len(expected)
    fused = [node for node in nodes if len(node.maps_to) > 1]
    if not structure_ok:
        note = f"torch's graph covers {sorted(set(chain))} and leaves {leaves}; expected {', '.join(expected)} and w, b"
    else:
        what = "; ".join(
            f"{node.name} computes {' and '.join(sorted(node.maps_to))} in one fused node" for node in fused
        )
        note = "every manual node has its torch counterpart" + (f"; {what}" if what else "")
        if any(node.name == "TBackward0" for node in nodes):
            note += "; TBackward0 is the weight's transpose (weight (1, D) is wᵀ)"
    shown = cfg.loss if loss == "mse" else loss  # the model's own loss, not graph's form of the MSE
    dag = tuple(ManualNode(*fields) for fields in spec["dag"])
    return GraphResult(shown, nodes, grads, ulps, structure_ok, note, k, epoch, batch, trace, dag)
