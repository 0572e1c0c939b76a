"""Drop-in PSA / Attention modules on the fused Triton attention (yolov10_kernels.ops.psa_attention).

`FusedAttention` and `FusedPSA` subclass the reference modules and keep their submodules (qkv, proj, pe;
cv1, cv2, attn, ffn) under the same names, so state_dict keys are unchanged and checkpoints load strictly
into either. Per call, backend.use_triton decides: 'auto' runs the Triton kernel on CUDA tensors and the
reference forward on the CPU; 'triton' always runs the kernel (CPU via TRITON_INTERPRET=1); 'reference'
never does. BN folding (model.fuse()) is honoured: a Conv without .bn contributes its biased conv alone.
"""
import torch.nn as nn

from yolov10.modules import PSA, Attention

from ..backend import check_backend, use_triton
from ..ops.psa_attention import psa_attention


def _shallow_copy(m, cls):
    """A `cls` instance sharing m's submodules, parameters, buffers and plain attributes (e.g. the layer
    index and source (m.i, m.f) that the model's parser sets), in m's order."""
    new = cls.__new__(cls)
    new.__dict__.update(m.__dict__)
    for registry in ("_modules", "_parameters", "_buffers"):
        new.__dict__[registry] = m.__dict__[registry].copy()
    return new


class FusedAttention(Attention):
    """yolov10.modules.Attention with the fused Triton attention (BN of qkv, softmax(q^T k) v, + pe)."""

    def __init__(self, dim, num_heads=8, attn_ratio=0.5, backend="auto"):
        super().__init__(dim, num_heads, attn_ratio)
        self.set_backend(backend)

    @classmethod
    def from_module(cls, m, backend="auto"):
        """Wrap an existing Attention, sharing its submodules (and so its parameters and buffers)."""
        new = _shallow_copy(m, cls)
        new.set_backend(backend)
        return new

    def set_backend(self, backend):
        check_backend(backend)
        self.backend = backend

    def forward(self, x):
        if not use_triton(self.backend, x):
            return super().forward(x)
        for conv in (self.qkv, self.pe):
            if not isinstance(conv.act, nn.Identity):
                raise ValueError("FusedAttention expects qkv and pe without activation (act=False)")
        y = psa_attention(self.qkv.conv(x), getattr(self.qkv, "bn", None), self.pe.conv.weight,
                          getattr(self.pe, "bn", None), self.num_heads, self.key_dim, self.head_dim,
                          self.training, pe_bias=self.pe.conv.bias)
        # proj stays a cuDNN 1x1 conv + nn.BatchNorm2d (see the ops module's docstring for why)
        return self.proj(y)


class FusedPSA(PSA):
    """yolov10.modules.PSA whose attention is a FusedAttention; cv1, cv2 and the FFN are 1x1 convs that stay
    with cuBLAS/cuDNN (GEMMs whose training-mode BN needs whole-output statistics first)."""

    def __init__(self, c1, c2, e=0.5, backend="auto"):
        super().__init__(c1, c2, e)
        self.attn = FusedAttention.from_module(self.attn, backend)

    @classmethod
    def from_module(cls, m, backend="auto"):
        new = _shallow_copy(m, cls)
        if not isinstance(new.attn, FusedAttention):
            new.attn = FusedAttention.from_module(new.attn, backend)  # same slot: same state_dict key order
        return new

    @property
    def backend(self):
        return self.attn.backend

    def set_backend(self, backend):
        self.attn.set_backend(backend)


def swap(model, backend="auto"):
    """Replace every yolov10 PSA (and any stand-alone Attention) in `model` by its fused drop-in, in place;
    drop-ins already there get the new backend. Returns how many fused attention modules the model now has
    (one per PSA)."""
    check_backend(backend)
    for m in model.modules():
        if isinstance(m, FusedAttention):
            m.set_backend(backend)
    for cls, fused in ((PSA, FusedPSA), (Attention, FusedAttention)):
        targets = [(parent, name, child) for parent in model.modules()
                   for name, child in parent.named_children() if type(child) is cls]
        for parent, name, child in targets:
            setattr(parent, name, fused.from_module(child, backend))
    return sum(isinstance(m, FusedAttention) for m in model.modules())
