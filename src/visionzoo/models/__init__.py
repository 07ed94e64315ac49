"""Model families, registered by name (timm's / torchvision's names where they exist)."""

from visionzoo.models import resnet  # noqa: F401  (registers the family)
from visionzoo.models._registry import (
    ModelEntry,
    Pretrained,
    create_model,
    get_model_entry,
    list_models,
    register_model,
)

__all__ = ["ModelEntry", "Pretrained", "create_model", "get_model_entry", "list_models", "register_model"]
