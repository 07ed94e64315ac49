"""visionzoo.train.slides: HIPT's slide pipeline in parts (feature grids, the ViT-4K loop, the assembled HIPT4K)."""

import torch

from visionzoo.data.slides import ShapeSlides
from visionzoo.models import create_model
from visionzoo.train import slides as pipeline


def _slides(length: int = 6) -> ShapeSlides:
    return ShapeSlides("test", grid_size=2, tile_size=32, length=length, pool_size=48, seed=0, **pipeline.EASY_TILES)


def test_a_slides_grid_holds_its_tiles_features_in_place():
    slides = _slides()
    features = torch.arange(len(slides.pool) * 3, dtype=torch.float32).view(-1, 3)  # Tensor[P, 3]
    grid, labels, indices = pipeline.grids(slides, features)
    assert grid.shape == (6, 3, 2, 2) and indices.shape == (6, 2, 2)
    assert torch.equal(grid[4, :, 1, 0], features[indices[4, 1, 0]])
    assert labels.tolist() == [slides.layout(i).label for i in range(6)]


def test_the_vit4k_loop_stops_at_its_steps_or_its_seconds():
    grid, labels = torch.randn(8, 16, 2, 2), torch.randint(0, 6, (8,))
    model, _, steps = pipeline.train_vit4k(grid, labels, 6, steps=3)
    assert steps == 3 and not model.training
    again, _, _ = pipeline.train_vit4k(grid, labels, 6, steps=3)  # seeded: the same weights
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    _, _, steps = pipeline.train_vit4k(grid, labels, 6, steps=3, seconds=0.0)
    assert steps == 0


def test_the_assembled_hipt4k_reads_a_slide_image_as_the_vit4k_reads_its_feature_grid():
    torch.manual_seed(0)
    slides = _slides(2)
    encoder = create_model(pipeline.ENCODER, num_classes=6, **pipeline.SCALED_ENCODER).eval()
    features, logits = pipeline.encode_pool(encoder, slides)
    assert features.shape == (48, 192) and logits.shape == (48, 6)
    encoder.reset_classifier(0)
    grid, _, _ = pipeline.grids(slides, features)
    vit4k = create_model("vit4k_xs", num_classes=6, in_dim=192).eval()
    model = pipeline.slide_model(encoder, vit4k, tile_size=32)
    with torch.no_grad():
        whole = model(pipeline.normalize(torch.stack([slides[i][0] for i in range(2)])))
        assert torch.allclose(whole, vit4k(grid), atol=1e-4)
