"""ResNet (He et al. 2016) in torchvision's module layout."""
