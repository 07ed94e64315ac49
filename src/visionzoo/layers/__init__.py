"""Building blocks shared by the model families (timm's module names, so checkpoints load key for key)."""

from visionzoo.layers.attention import Attention, scaled_dot_product_attention
from visionzoo.layers.attention_pool import AttentionPoolLatent, AttentionPoolPrr
from visionzoo.layers.block import Block
from visionzoo.layers.depthwise_conv import DepthwiseConv2d
from visionzoo.layers.drop import DropPath, drop_path, drop_path_rates
from visionzoo.layers.features import FeatureInfo, feature_take_indices, taken_in_order
from visionzoo.layers.grad_checkpoint import run_blocks
from visionzoo.layers.layer_scale import LayerScale
from visionzoo.layers.linear import Linear, drop_cast_caches
from visionzoo.layers.mlp import Mlp
from visionzoo.layers.norm import FrozenBatchNorm2d, LayerNorm2d
from visionzoo.layers.patch_embed import PatchEmbed, positive_pair, resample_patch_embed
from visionzoo.layers.pos_embed import resample_abs_pos_embed, sincos_pos_embed_2d

__all__ = [
    "Attention", "AttentionPoolLatent", "AttentionPoolPrr", "Block", "DepthwiseConv2d", "DropPath", "FeatureInfo", "FrozenBatchNorm2d",
    "LayerNorm2d", "LayerScale", "Linear", "Mlp", "PatchEmbed",
    "drop_cast_caches", "drop_path", "drop_path_rates", "feature_take_indices", "positive_pair",
    "resample_abs_pos_embed", "resample_patch_embed",
    "run_blocks", "scaled_dot_product_attention", "sincos_pos_embed_2d", "taken_in_order",
]
