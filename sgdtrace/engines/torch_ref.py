"""The reference: the training loop a learner writes, as in the article.

The model's ``nn.Module`` and loss as a learner writes them (the model's torch side,
``sgdtrace/models/<model>_torch.py``: the article's ``x * weight + bias`` and ``nn.MSELoss``,
or ``nn.Linear(D, 1)``), ``optim.SGD`` (or another torch.optim class),
``DataLoader(TensorDataset(x, y))``. Nothing here copies a choice of the manual engine:
the batches come from a real DataLoader, the gradients from autograd, the update from
``torch.optim``. sgdtrace only reads the values: the loss and gradients after
``backward()``, the parameters and every state entry the optimizer keeps for them
(``optimizer.state[p]``, torch's names) after ``optimizer.step()``, each in the shape the
model declares for its parameter (``weight[0]`` for ``nn.Linear(D, 1)``'s w).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import optim
from torch.utils.data import DataLoader, TensorDataset

from sgdtrace.models.linear_torch import LinearModel  # noqa: E402, F401  (the article's module, importable here)


def make_criterion(loss_form: str = "mse"):
    """The loss a learner writes: ``nn.MSELoss()``, or (``"explicit"``) ``((output - target) ** 2).mean()``,
    whose autograd graph (SubBackward0, PowBackward0, MeanBackward0) follows the article's nodes."""
    from sgdtrace.models.linear_torch import criterion

    return criterion(loss_form)


class _HostRecorder:
    """CPU: read each value with ``.item()`` into a NumPy column (cheaper than a tensor copy).

    A column is made when its field is first put (the optimizer's state appears after its first
    step)."""

    def __init__(self, steps: int, dtype: torch.dtype, shapes: dict[str, tuple[int, ...]] | None = None):
        self.steps = steps
        from sgdtrace.dtypes import np_dtype

        self.np_dtype = np_dtype(str(dtype).split(".")[-1])  # bfloat16: ml_dtypes.bfloat16
        self.cols: dict[str, np.ndarray] = {}
        self.shapes = shapes or {}

    def column(self, field: str):
        col = self.cols.get(field)
        if col is None:
            col = self.cols[field] = np.empty((self.steps, *self.shapes.get(field, ())), dtype=self.np_dtype)
        return col

    def put(self, field: str, k: int, value: torch.Tensor) -> None:
        self.writer(field)(k, value)

    def writer(self, field: str):
        """``write(k, value)``: step ``k``'s value of ``field`` into its column (the per-step path)."""
        col = self.column(field)
        shape = self.shapes.get(field, ())
        if not shape:

            def write(k: int, value: torch.Tensor) -> None:
                col[k] = value.item()

            return write

        def write_array(k: int, value: torch.Tensor) -> None:
            v = value.detach().reshape(shape)
            col[k] = (v.float() if v.itemsize == 2 else v).numpy()

        return write_array

    def result(self) -> dict[str, np.ndarray]:
        return self.cols


class _DeviceRecorder:
    """CUDA: copy each value into a column that stays on the device; no host sync per step.

    The columns come to the host once, in :meth:`result`.
    """

    def __init__(
        self,
        steps: int,
        dtype: torch.dtype,
        device: torch.device,
        shapes: dict[str, tuple[int, ...]] | None = None,
    ):
        self.steps, self.dtype, self.device = steps, dtype, device
        self.cols: dict[str, torch.Tensor] = {}
        self.shapes = shapes or {}

    def column(self, field: str):
        col = self.cols.get(field)
        if col is None:
            shape = self.shapes.get(field, ()) or (1,)
            col = self.cols[field] = torch.empty((self.steps, *shape), dtype=self.dtype, device=self.device)
        return col

    def put(self, field: str, k: int, value: torch.Tensor) -> None:
        self.writer(field)(k, value)

    def writer(self, field: str):
        """``write(k, value)``: step ``k``'s value of ``field`` into its device column."""
        col = self.column(field)
        shape = self.shapes.get(field, ()) or (1,)

        def write(k: int, value: torch.Tensor) -> None:
            col[k] = value.detach().reshape(shape)

        return write

    def result(self) -> dict[str, np.ndarray]:
        from sgdtrace.dtypes import np_dtype

        out = np_dtype(str(self.dtype).split(".")[-1])  # NumPy has no torch.bfloat16: through float32, exactly
        cols = {}
        for f, c in self.cols.items():
            c = c.reshape(self.steps, *self.shapes.get(f, ()))
            cols[f] = c.cpu().float().numpy().astype(out) if c.itemsize == 2 else c.cpu().numpy()
        return cols


def run(
    x: np.ndarray,
    y: np.ndarray,
    config,
    device: torch.device,
    steps: int,
    progress: Callable[[int], None] | None = None,
    sync_free: bool | None = None,
    loss_form: str = "mse",
    loop_context: Callable[[], Any] = contextlib.nullcontext,
    model=None,
    initial: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Train with autograd + optim.SGD over a DataLoader; return the same columns as the manual engine.

    ``model`` (:class:`sgdtrace.models.Model`; default: the article's, or D features where ``x``
    has more than one column) builds the module and feeds the batches; ``initial``: its
    parameters' initial values (default: the model's, from ``config``).

    ``sync_free`` picks the device-resident recorder (default: on CUDA); tests force it on the CPU.
    ``loss_form="explicit"`` writes the loss out as ``((output - target) ** 2).mean()`` instead of
    nn.MSELoss. The training loop runs inside ``loop_context()`` (the CUDA tests put
    ``torch.cuda.set_sync_debug_mode("error")`` there); the columns reach the host after it.

    The gradients and the loss are read right after ``loss.backward()``, the parameters and
    buffers after ``optimizer.step()``: on CUDA, optim.SGD's multi-tensor path with Nesterov
    adds ``momentum * buf`` into ``p.grad`` in place during the step.
    """
    from sgdtrace import models
    from sgdtrace.engines.protocol import PROGRESS_EVERY, model_for, state_field, value_fields

    model = model or model_for(config, x)
    side = models.torch_side(model)
    if initial is None:
        initial = model.module.initial(config, model)
    dtype = getattr(torch, config.dtype)
    tensor_x, tensor_y = side.tensors(
        model, torch.as_tensor(x, dtype=dtype).to(device), torch.as_tensor(y, dtype=dtype).to(device)
    )
    dataset = TensorDataset(tensor_x, tensor_y)
    generator = torch.Generator().manual_seed(config.effective_seed) if config.shuffle else None
    dataloader = DataLoader(
        dataset, batch_size=config.batch_size, shuffle=config.shuffle, generator=generator, drop_last=config.drop_last
    )

    net = side.module(model, initial, dtype, device)
    # the model's own loss (--loss), unless the caller asks for another form of the linear model's
    criterion = side.criterion(getattr(config, "loss", "mse") if loss_form == "mse" else loss_form)
    optimizer = make_optimizer(net.parameters(), config)
    scheduler = make_scheduler(optimizer, config)
    per_step = scheduler is not None and config.scheduler.interval == "step"
    lrs = np.empty(steps, dtype=np.float64) if scheduler is not None else None

    if sync_free is None:
        sync_free = device.type != "cpu"
    params = side.bindings(model, net)  # (name, torch Parameter), in the model's order
    shapes = {}
    for p in model.params:
        shapes[p.name] = shapes["grad_" + p.name] = p.shape
    rec = _DeviceRecorder(steps, dtype, device, shapes) if sync_free else _HostRecorder(steps, dtype, shapes)
    for f in value_fields(model.names):
        rec.column(f)
    # each column's writer, made once: the per-step path is one call per value
    grad_writers = [(rec.writer("grad_" + name), p) for name, p in params]
    param_writers = [(rec.writer(name), p) for name, p in params]
    write_loss = rec.writer("loss")
    state_columns: list[tuple[Callable, dict, str]] = []  # (writer, the parameter's state, key): after step 1
    report = PROGRESS_EVERY if progress is not None else -1

    k = 0
    with loop_context():
        for _epoch in range(config.epochs):
            for data, target in dataloader:
                # forward pass
                output = net(data)
                loss = criterion(output, target)
                # backward pass (gradient calculation)
                loss.backward()
                for write, p in grad_writers:
                    write(k, p.grad)
                write_loss(k, loss)
                if lrs is not None:  # the rate this step uses
                    lrs[k] = optimizer.param_groups[0]["lr"]
                # update weights
                optimizer.step()
                if per_step:
                    scheduler.step()
                for write, p in param_writers:
                    write(k, p)
                if k == 0:  # what the optimizer keeps per parameter, as torch names it ("step" is a count)
                    kept = [
                        (state_field(key, name), name, optimizer.state[p], key)
                        for name, p in params
                        for key, v in optimizer.state[p].items()
                        if key != "step" and isinstance(v, torch.Tensor)
                    ]
                    for column, name, _, _ in kept:
                        shapes[column] = shapes[name]
                    state_columns = [(rec.writer(column), state, key) for column, _, state, key in kept]
                for write, state, key in state_columns:
                    write(k, state[key])
                # zero gradients from the previous step
                optimizer.zero_grad()
                k += 1
                if k == report:
                    progress(k)
                    report += PROGRESS_EVERY
            if scheduler is not None and not per_step:
                scheduler.step()
            if progress is not None:
                progress(k)
    if k != steps:  # pragma: no cover - would mean the batch plan and DataLoader disagree
        raise RuntimeError(f"DataLoader gave {k} batches, the batch plan {steps}")
    result = rec.result()
    if lrs is not None:
        result["lr"] = lrs
    return result


def make_optimizer(params, config) -> optim.Optimizer:
    """The optimizer a learner writes: torch.optim's class, its options by their own keyword names
    (``foreach``/``fused`` only when set: torch picks its default implementation otherwise)."""
    from sgdtrace.engines.optimizers import registry

    kw: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay, "maximize": config.maximize}
    spec = registry.spec(config.optimizer)  # torch's class and the keywords it takes
    cls = getattr(optim, spec.torch_class)
    for key in spec.options:
        if key != "fused":
            kw[key] = tuple(config.betas) if key == "betas" else getattr(config, key)
    if config.foreach is not None:
        kw["foreach"] = config.foreach
    if config.fused is not None:
        kw["fused"] = config.fused
    return cls(params, **kw)


def make_scheduler(optimizer, config):
    """torch.optim.lr_scheduler's class named by the config's schedule, with its keyword arguments."""
    if config.scheduler is None:
        return None
    cls = getattr(optim.lr_scheduler, config.scheduler.name)
    return cls(optimizer, **config.scheduler.kwargs)
