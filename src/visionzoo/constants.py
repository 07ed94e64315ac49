"""Constants shared across families: ImageNet's channel statistics (the normalisation of timm's and
torchvision's checkpoints)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
