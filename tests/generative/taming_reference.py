"""taming-transformers' first stage as a reference for the tests of VQGAN and its prior."""

from taming.modules.diffusionmodules import model as taming_model
from taming.modules.vqvae import quantize as taming_quantize
from torch import nn


class TamingVQModel(nn.Module):
    """taming's VQModel without its Lightning shell (taming/models/vqgan.py imports pytorch_lightning): the same
    submodule names, so its state dict is the one a taming .ckpt holds; encode and decode as VQModel's."""

    def __init__(self, ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels, embed_dim, num_codes,
                 in_chans=3):
        super().__init__()
        ddconfig = dict(double_z=False, z_channels=z_channels, resolution=resolution, in_channels=in_chans,
                        out_ch=in_chans, ch=ch, ch_mult=list(ch_mult), num_res_blocks=num_res_blocks,
                        attn_resolutions=list(attn_resolutions), dropout=0.0)
        self.encoder = taming_model.Encoder(**ddconfig)
        self.decoder = taming_model.Decoder(**ddconfig)
        self.quantize = taming_quantize.VectorQuantizer2(num_codes, embed_dim, beta=0.25, legacy=False)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)

    def forward(self, x):
        quant, _, (_, _, indices) = self.quantize(self.quant_conv(self.encoder(x)))
        return self.decoder(self.post_quant_conv(quant)), indices
