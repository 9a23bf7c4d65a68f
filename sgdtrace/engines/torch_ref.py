"""The reference: the training loop a learner writes, as in the article.

``nn.Module`` with ``weight`` and ``bias`` parameters, ``nn.MSELoss``, ``optim.SGD``,
``DataLoader(TensorDataset(x, y))``. Nothing here copies a choice of the manual engine:
the batches come from a real DataLoader, the gradients from autograd, the update from
``torch.optim.SGD``. sgdtrace only reads the values: the loss and gradients after
``backward()``, the parameters and every state entry the optimizer keeps for them
(``optimizer.state[p]``, torch's names) after ``optimizer.step()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn, optim
from torch.utils.data import DataLoader, TensorDataset


class LinearModel(nn.Module):
    """The article's model: ypred = x * weight + bias."""

    def __init__(self, init_w: float = 0.0, init_b: float = 0.0, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.weight = nn.Parameter(torch.full((1,), init_w, dtype=dtype))
        self.bias = nn.Parameter(torch.full((1,), init_b, dtype=dtype))

    def forward(self, xb: torch.Tensor) -> torch.Tensor:
        return xb * self.weight + self.bias


def make_criterion(loss_form: str = "mse"):
    """The loss a learner writes: ``nn.MSELoss()``, or (``"explicit"``) ``((output - target) ** 2).mean()``,
    whose autograd graph (SubBackward0, PowBackward0, MeanBackward0) follows the article's nodes."""
    if loss_form == "mse":
        return nn.MSELoss()

    def criterion(output, target):
        return ((output - target) ** 2).mean()

    return criterion


class _HostRecorder:
    """CPU: read each value with ``.item()`` into a NumPy column (cheaper than a tensor copy).

    A column is made when its field is first put (the optimizer's state appears after its first
    step)."""

    def __init__(self, steps: int, dtype: torch.dtype):
        self.steps = steps
        from sgdtrace.dtypes import np_dtype

        self.np_dtype = np_dtype(str(dtype).split(".")[-1])  # bfloat16: ml_dtypes.bfloat16
        self.cols: dict[str, np.ndarray] = {}

    def column(self, field: str):
        col = self.cols.get(field)
        if col is None:
            col = self.cols[field] = np.empty(self.steps, dtype=self.np_dtype)
        return col

    def put(self, field: str, k: int, value: torch.Tensor) -> None:
        self.column(field)[k] = value.item()

    def result(self) -> dict[str, np.ndarray]:
        return self.cols


class _DeviceRecorder:
    """CUDA: copy each value into a column that stays on the device; no host sync per step.

    The columns come to the host once, in :meth:`result`.
    """

    def __init__(self, steps: int, dtype: torch.dtype, device: torch.device):
        self.steps, self.dtype, self.device = steps, dtype, device
        self.cols: dict[str, torch.Tensor] = {}

    def column(self, field: str):
        col = self.cols.get(field)
        if col is None:
            col = self.cols[field] = torch.empty((self.steps, 1), dtype=self.dtype, device=self.device)
        return col

    def put(self, field: str, k: int, value: torch.Tensor) -> None:
        self.column(field)[k] = value.detach()

    def result(self) -> dict[str, np.ndarray]:
        from sgdtrace.dtypes import np_dtype

        out = np_dtype(str(self.dtype).split(".")[-1])  # NumPy has no torch.bfloat16: through float32, exactly
        return {
            f: c.reshape(-1).cpu().float().numpy().astype(out) if c.itemsize == 2 else c.reshape(-1).cpu().numpy()
            for f, c in self.cols.items()
        }


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
) -> dict[str, np.ndarray]:
    """Train with autograd + optim.SGD over a DataLoader; return the same columns as the manual engine.

    ``sync_free`` picks the device-resident recorder (default: on CUDA); tests force it on the CPU.
    ``loss_form="explicit"`` writes the loss out as ``((output - target) ** 2).mean()`` instead of
    nn.MSELoss. The training loop runs inside ``loop_context()`` (the CUDA tests put
    ``torch.cuda.set_sync_debug_mode("error")`` there); the columns reach the host after it.

    The gradients and the loss are read right after ``loss.backward()``, the parameters and
    buffers after ``optimizer.step()``: on CUDA, optim.SGD's multi-tensor path with Nesterov
    adds ``momentum * buf`` into ``p.grad`` in place during the step.
    """
    from sgdtrace.engines.protocol import FIELDS, PROGRESS_EVERY, state_field

    dtype = getattr(torch, config.dtype)
    tensor_x = torch.as_tensor(x, dtype=dtype).to(device)
    tensor_y = torch.as_tensor(y, dtype=dtype).to(device)
    dataset = TensorDataset(tensor_x, tensor_y)
    generator = torch.Generator().manual_seed(config.effective_seed) if config.shuffle else None
    dataloader = DataLoader(
        dataset, batch_size=config.batch_size, shuffle=config.shuffle, generator=generator, drop_last=config.drop_last
    )

    model = LinearModel(config.init_w, config.init_b, dtype).to(device)
    criterion = make_criterion(loss_form)
    optimizer = make_optimizer(model.parameters(), config)
    scheduler = make_scheduler(optimizer, config)
    per_step = scheduler is not None and config.scheduler.interval == "step"
    lrs = np.empty(steps, dtype=np.float64) if scheduler is not None else None

    if sync_free is None:
        sync_free = device.type != "cpu"
    rec = _DeviceRecorder(steps, dtype, device) if sync_free else _HostRecorder(steps, dtype)
    for f in FIELDS:
        rec.column(f)
    put = rec.put
    params = (("w", model.weight), ("b", model.bias))
    state_columns: list[tuple[str, dict, str]] = []  # (column, the parameter's state, key): after step 1
    report = PROGRESS_EVERY if progress is not None else -1

    k = 0
    with loop_context():
        for _epoch in range(config.epochs):
            for data, target in dataloader:
                # forward pass
                output = model(data)
                loss = criterion(output, target)
                # backward pass (gradient calculation)
                loss.backward()
                put("grad_w", k, model.weight.grad)
                put("grad_b", k, model.bias.grad)
                put("loss", k, loss)
                if lrs is not None:  # the rate this step uses
                    lrs[k] = optimizer.param_groups[0]["lr"]
                # update weights
                optimizer.step()
                if per_step:
                    scheduler.step()
                put("w", k, model.weight)
                put("b", k, model.bias)
                if k == 0:  # what the optimizer keeps per parameter, as torch names it ("step" is a count)
                    state_columns = [
                        (state_field(key, name), optimizer.state[p], key)
                        for name, p in params
                        for key, v in optimizer.state[p].items()
                        if key != "step" and isinstance(v, torch.Tensor)
                    ]
                for column, state, key in state_columns:
                    put(column, k, state[key])
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
    kw: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay, "maximize": config.maximize}
    name = config.optimizer
    if name == "sgd":
        cls = optim.SGD
        kw.update(momentum=config.momentum, dampening=config.dampening, nesterov=config.nesterov)
    elif name in ("adam", "adamw"):
        cls = optim.Adam if name == "adam" else optim.AdamW
        kw.update(betas=tuple(config.betas), eps=config.eps, amsgrad=config.amsgrad)
    elif name == "rmsprop":
        cls = optim.RMSprop
        kw.update(alpha=config.alpha, eps=config.eps, momentum=config.momentum, centered=config.centered)
    else:
        cls = optim.Adagrad
        kw.update(lr_decay=config.lr_decay, initial_accumulator_value=config.initial_accumulator_value, eps=config.eps)
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
