"""Shared transformer parts: one implementation each, composed by every model in FAE."""
from fae.nn.attention import Attention, KVCache, joint_attention, masked_attention
from fae.nn.block import TransformerBlock, make_mlp, make_norm
from fae.nn.embeddings import TimestepEmbedder, sincos_2d, timestep_embedding
from fae.nn.mlp import Mlp, SwiGLU, swiglu_hidden
from fae.nn.rope import Rope2D, apply_rope, rope_2d_angles

__all__ = ["Attention", "KVCache", "joint_attention", "masked_attention", "TransformerBlock", "make_mlp", "make_norm", "TimestepEmbedder", "sincos_2d",
           "timestep_embedding", "Mlp", "SwiGLU", "swiglu_hidden", "Rope2D", "apply_rope", "rope_2d_angles"]
