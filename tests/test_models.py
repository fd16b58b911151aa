"""The bundled model registry and the count rule."""

from __future__ import annotations

import pytest

from seedflow.errors import UnknownModelError
from seedflow.models import get_model, list_models, stated_image_count

SEEDREAM = "bytedance/seedream-4-0/sequential"


def test_seedream_is_bundled_with_its_schemas() -> None:
    spec = get_model(SEEDREAM)
    assert spec in list_models()
    assert spec.input_schema["required"] == ["text"]
    assert spec.prompt_field == "text"
    assert spec.count_field == "sequential_image_generation_options"
    assert "images" in spec.output_schema["output"]["properties"]


def test_defaults_fill_missing_fields_only() -> None:
    spec = get_model(SEEDREAM)
    body = spec.with_defaults({"text": "Generate 2 images of a fox", "image_size": "2048:2048 (1:1)"})
    assert body["image_size"] == "2048:2048 (1:1)"
    assert body["sequential_image_generation_options"] == 3
    assert spec.image_count(body) == 3


def test_unknown_model_suggests_the_closest() -> None:
    with pytest.raises(UnknownModelError) as info:
        get_model("bytedance/seedream-4-0/sequencial")
    assert "did you mean 'bytedance/seedream-4-0/sequential'" in info.value.format_message()


@pytest.mark.parametrize(
    ("prompt", "count"),
    [
        ("Generate 3 images of a beautiful sunset over a calm ocean.", 3),
        ("Four consecutive storyboard panels of a heist", 4),
        ("make twelve cinematic film stills of a harbour", 12),
        ("Create a set of 5 sequential images of a fox", 5),
        ("Generate one image of a cat", 1),
        ("A storyboard: 1. a cat wakes 2. a dog barks", None),
        ("A sunset over the sea", None),
    ],
)
def test_stated_image_count_reads_digits_and_words(prompt: str, count: int | None) -> None:
    assert stated_image_count(prompt) == count


def test_every_error_is_part_of_the_public_api() -> None:
    import seedflow
    import seedflow.errors

    assert set(seedflow.errors.__all__) <= set(seedflow.__all__)
    assert all(hasattr(seedflow, name) for name in seedflow.__all__)
