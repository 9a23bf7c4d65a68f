"""Adam and AdamW written as the textbook does (Kingma & Ba), judged against torch.optim.Adam/AdamW.

    sgdtrace run --engine docs/examples/engine_adam.py --optimizer adam
    sgdtrace run --engine docs/examples/engine_adam.py --optimizer adamw --dtype bfloat16

update is called once per parameter tensor, with the step's hyper-parameters by torch's names
(hp.lr is the scheduled rate under --scheduler); state is this parameter's own dict. The
values are NumPy values of the run's dtype (ml_dtypes' bfloat16 in a bfloat16 run).
"""

import numpy as np

SGDTRACE = {"optimizer": ["adam", "adamw"]}


def update(param, grad, state, hp):
    beta1, beta2 = hp.betas
    g = -grad if hp.maximize else grad
    if hp.weight_decay != 0:
        if hp.decoupled_weight_decay:  # AdamW: the parameter decays, not the gradient
            param = param * (1 - hp.lr * hp.weight_decay)
        else:  # Adam: L2, added to the gradient
            g = g + hp.weight_decay * param
    t = state["step"] = state.get("step", 0) + 1
    m = state["exp_avg"] = beta1 * state.get("exp_avg", 0 * g) + (1 - beta1) * g
    v = state["exp_avg_sq"] = beta2 * state.get("exp_avg_sq", 0 * g) + (1 - beta2) * g * g
    if hp.amsgrad:
        v = state["max_exp_avg_sq"] = np.maximum(state.get("max_exp_avg_sq", v), v)
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    return param - hp.lr * m_hat / (np.sqrt(v_hat) + hp.eps)
