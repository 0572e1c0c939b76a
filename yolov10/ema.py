"""Exponential moving average of a model's weights, as the official trainer keeps it (ultralytics
`ModelEMA`): decay(u) = decay * (1 - exp(-u / tau)) after u optimizer steps, applied to every floating-point
state_dict entry, BatchNorm running statistics included. Validation and checkpoints use the EMA."""
import copy
import math

import torch


def unwrap(model):
    """The bare model inside DistributedDataParallel / DataParallel."""
    return model.module if isinstance(model, (torch.nn.parallel.DistributedDataParallel,
                                              torch.nn.DataParallel)) else model


class ModelEMA:
    def __init__(self, model, decay=0.9999, tau=2000, updates=0):
        self.ema = copy.deepcopy(unwrap(model)).eval()
        self.updates = updates
        self.decay_max, self.tau = decay, tau
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def decay(self, updates):
        return self.decay_max * (1 - math.exp(-updates / self.tau))

    @torch.no_grad()
    def update(self, model):
        self.updates += 1
        d = self.decay(self.updates)
        msd = unwrap(model).state_dict()
        keys, ema = zip(*((k, v) for k, v in self.ema.state_dict().items() if v.dtype.is_floating_point))
        # one multi-tensor op per step instead of ~800 small ones; the same arithmetic as v = d v + (1 - d) m
        torch._foreach_mul_(ema, d)
        torch._foreach_add_(ema, torch._foreach_mul([msd[k].detach() for k in keys], 1 - d))

    def state_dict(self):
        return {"updates": self.updates, "decay": self.decay_max, "tau": self.tau, "model": self.ema.state_dict()}

    def load_state_dict(self, state):
        self.updates = int(state["updates"])
        self.decay_max, self.tau = state.get("decay", self.decay_max), state.get("tau", self.tau)
        self.ema.load_state_dict(state["model"])
