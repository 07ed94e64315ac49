"""Model families, registered by name (timm's / torchvision's names where they exist).

Importing a family registers its models; the detectors (``visionzoo.detection``, task "detection")
register in the same registry and take their backbones from it.
"""

from visionzoo import detection  # noqa: F401
from visionzoo.generative import code_prior, dcgan, image_gpt, vit_vqgan, vqgan, vqvae  # noqa: F401
from visionzoo.models import convnext, hipt, resnet, swin_transformer, vision_transformer  # noqa: F401
from visionzoo.models._registry import (
    ModelEntry,
    Pretrained,
    create_model,
    get_model_entry,
    is_model,
    list_models,
    list_tasks,
    load_checkpoint,
    register_model,
)

__all__ = ["ModelEntry", "Pretrained", "create_model", "get_model_entry", "is_model", "list_models", "list_tasks",
           "load_checkpoint", "register_model"]
