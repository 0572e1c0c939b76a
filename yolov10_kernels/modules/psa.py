"""Drop-in PSA / Attention modules on the fused Triton attention (yolov10_kernels.ops.psa_attention).

`FusedAttention` and `FusedPSA` keep the replaced modules' submodules (qkv, proj, pe; cv1, cv2, attn, ffn)
under the same names, so state_dict keys are unchanged and checkpoints load strictly into either. Per call,
backend.use_triton decides: 'auto' runs the Triton kernel on CUDA tensors and the reference forward on the
CPU; 'triton' always runs the kernel (CPU via TRITON_INTERPRET=1); 'reference' never does. BN folding
(model.fuse()) is honoured: a Conv without .bn contributes its biased conv alone.
"""
import torch.nn as nn

from yolov10.modules import PSA, Attention

from ..ops.psa_attention import psa_attention
from .dropin import DropIn, swap_modules


class FusedAttention(DropIn):
    """Attention with the fused Triton attention (BN of qkv, softmax(q^T k) v, + pe); proj stays a cuDNN 1x1
    conv + nn.BatchNorm2d (see the ops module's docstring for why)."""

    def forward(self, x):
        if not self.fused_path(x):
            return self.reference_forward(x)
        return self.guarded(x, self._fused_forward)

    def _fused_forward(self, x):
        y = psa_attention(self.qkv.conv(x), getattr(self.qkv, "bn", None), self.pe.conv.weight,
                          getattr(self.pe, "bn", None), self.num_heads, self.key_dim, self.head_dim,
                          self.training, pe_bias=self.pe.conv.bias)
        return self.proj(y)


class FusedPSA(DropIn):
    """PSA whose attention is a FusedAttention; cv1, cv2 and the FFN are 1x1 convs that stay with
    cuBLAS/cuDNN (GEMMs whose training-mode BN needs whole-output statistics first)."""

    @property
    def backend(self):
        return self.attn.backend

    def set_backend(self, backend):
        if isinstance(self.attn, FusedAttention):
            self.attn.set_backend(backend)
        else:
            self.attn = FusedAttention.from_module(self.attn, backend)  # same slot: same state_dict key order


def _plain_conv(m):
    return isinstance(getattr(m, "conv", None), nn.Conv2d) and isinstance(getattr(m, "act", None), nn.Identity)


def supported(m):
    """An Attention whose qkv and pe convs have no activation (the kernel applies none)."""
    return all(_plain_conv(getattr(m, name, None)) for name in ("qkv", "pe")) and hasattr(m, "proj")


def supported_psa(m):
    return supported(getattr(m, "attn", None))


def swap(model, backend="auto", ref_cls=None, attention_cls=None):
    """Replace every module of class ref_cls (default yolov10's PSA) by a FusedPSA and every other one of class
    attention_cls (default yolov10's Attention) by a FusedAttention, in place; drop-ins already there get the
    new backend. Returns how many fused attention modules the model now has (one per PSA)."""
    swap_modules(model, ref_cls or PSA, FusedPSA, supported_psa, backend)
    return swap_modules(model, attention_cls or Attention, FusedAttention, supported, backend)
