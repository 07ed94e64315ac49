"""visionzoo.generative: image generative models (VQ-VAE first; VQGAN, ViT-VQGAN, Image GPT and a GAN to come)."""
