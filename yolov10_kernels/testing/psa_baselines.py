"""PSA's attention before `proj` in plain PyTorch, with the signature of ops.psa_attention.psa_attention: the
benchmark's torch.compile baseline (SDPA) and the tests' eager reference."""
import torch.nn.functional as F

from ..ops.batchnorm import batch_norm


def _torch_attention(attend, qkv_raw, qkv_bn, pe_weight, pe_bn, num_heads, key_dim, head_dim, training,
                     pe_bias=None):
    B, _, Hh, Ww = qkv_raw.shape
    N, C = Hh * Ww, num_heads * head_dim
    qkv = batch_norm(qkv_raw, qkv_bn, training)
    q, k, v = qkv.view(B, num_heads, 2 * key_dim + head_dim, N).split([key_dim, key_dim, head_dim], dim=2)
    x = attend(q, k, v).reshape(B, C, Hh, Ww)
    pe = F.conv2d(v.reshape(B, C, Hh, Ww), pe_weight, pe_bias, padding=pe_weight.shape[-1] // 2, groups=C)
    return x + batch_norm(pe, pe_bn, training)


def psa_attention_sdpa(qkv_raw, qkv_bn, pe_weight, pe_bn, num_heads, key_dim, head_dim, training, pe_bias=None):
    """psa_attention in plain PyTorch with F.scaled_dot_product_attention (key dim != value dim: the math or
    memory-efficient backend): the torch.compile baseline of the benchmark."""
    def attend(q, k, v):  # (B, h, d, N) -> SDPA's (B, h, N, d) and back
        o = F.scaled_dot_product_attention(q.transpose(-2, -1), k.transpose(-2, -1), v.transpose(-2, -1),
                                           scale=key_dim ** -0.5)
        return o.transpose(-2, -1)
    return _torch_attention(attend, qkv_raw, qkv_bn, pe_weight, pe_bn, num_heads, key_dim, head_dim, training,
                            pe_bias)


def psa_attention_reference(qkv_raw, qkv_bn, pe_weight, pe_bn, num_heads, key_dim, head_dim, training,
                            pe_bias=None):
    """psa_attention as the eager reference computes it (B x heads x N x N scores in memory)."""
    def attend(q, k, v):
        attn = ((q.transpose(-2, -1) @ k) * key_dim ** -0.5).softmax(dim=-1)
        return v @ attn.transpose(-2, -1)
    return _torch_attention(attend, qkv_raw, qkv_bn, pe_weight, pe_bn, num_heads, key_dim, head_dim, training,
                            pe_bias)
