"""The bundled model registry: schemas and metadata shipped in ``seedflow/schemas/``.

A model is described by three files: ``<name>.model.json`` (metadata: model id, which field is
the prompt, the image count and the seed, the estimated price) and the input and output JSON
Schemas it names. Adding a model means adding files, not code.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import jsonschema

from .errors import UnknownModelError

__all__ = [
    "ModelSpec",
    "get_model",
    "list_models",
    "load_bundled_schema",
    "schema_path",
    "stated_image_count",
]



def _schemas_dir() -> Any:
    return resources.files("seedflow").joinpath("schemas")


def load_bundled_schema(name: str) -> Any:
    """Read one JSON file shipped in ``seedflow/schemas/``."""
    text = _schemas_dir().joinpath(name).read_text(encoding="utf-8")
    return json.loads(text)


def schema_path(name: str) -> str:
    """The filesystem path of a bundled schema file (for editors and messages)."""
    return str(_schemas_dir().joinpath(name))


@dataclass(frozen=True)
class ModelSpec:
    """What seedflow knows about one model of the API."""

    model_id: str
    title: str
    input_schema: Mapping[str, Any]
    output_schema: Mapping[str, Any]
    prompt_field: str | None = None
    count_field: str | None = None
    seed_field: str | None = None
    size_field: str | None = None
    count_must_match_prompt: bool = False
    count_is_ceiling: bool = False
    output_kind: str = "images"
    price_per_image: float = 0.0
    currency: str = "USD"
    price_note: str = ""
    description: str = ""
    files: tuple[str, ...] = field(default=(), compare=False)

    @property
    def properties(self) -> Mapping[str, Any]:
        props = self.input_schema.get("properties", {})
        assert isinstance(props, Mapping)
        return props

    def defaults(self) -> dict[str, Any]:
        """Every input field that has a default, with that default."""
        return {k: v["default"] for k, v in self.properties.items() if "default" in v}

    def with_defaults(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """``data`` with every missing defaulted field filled in (the body seedflow sends)."""
        filled = self.defaults()
        filled.update(data)
        return filled

    def validator(self) -> jsonschema.protocols.Validator:
        """A compiled validator of this model's input schema."""
        return _validator_for(self.model_id)

    def image_count(self, data: Mapping[str, Any]) -> int:
        """How many images a job with this input asks for (and is billed for)."""
        if self.count_field is None:
            return 1
        value = data.get(self.count_field, self.defaults().get(self.count_field, 1))
        return int(value) if isinstance(value, int) else 1

    def estimate_cost(self, images: int, price_per_image: float | None = None) -> float:
        """Estimated cost of ``images`` images (an estimate: see ``price_note``)."""
        price = self.price_per_image if price_per_image is None else price_per_image
        return round(images * price, 6)


def _spec_files() -> Iterator[str]:
    for entry in _schemas_dir().iterdir():
        if entry.name.endswith(".model.json"):
            yield entry.name


@cache
def _registry() -> dict[str, ModelSpec]:
    specs: dict[str, ModelSpec] = {}
    for name in sorted(_spec_files()):
        meta = load_bundled_schema(name)
        input_name = meta.pop("input_schema")
        output_name = meta.pop("output_schema")
        spec = ModelSpec(
            input_schema=load_bundled_schema(input_name),
            output_schema=load_bundled_schema(output_name),
            files=(name, input_name, output_name),
            **meta,
        )
        specs[spec.model_id] = spec
    return specs


@cache
def _validator_for(model_id: str) -> jsonschema.protocols.Validator:
    schema = get_model(model_id).input_schema
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def list_models() -> list[ModelSpec]:
    """Every bundled model, sorted by id."""
    return [spec for _, spec in sorted(_registry().items())]


def get_model(model_id: str) -> ModelSpec:
    """The bundled model with this id, or an error that names the ones that exist."""
    registry = _registry()
    try:
        return registry[model_id]
    except KeyError:
        known = sorted(registry)
        close = difflib.get_close_matches(model_id, known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known models: {', '.join(known)}"
        raise UnknownModelError(f"unknown model '{model_id}'", hint=hint) from None


# --- the count rule -----------------------------------------------------------------------------

_NUMBER_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
    "a single": 1, "a pair of": 2, "a couple of": 2, "a dozen": 12,
}  # fmt: skip
_NOUNS = (
    r"images?|pictures?|photos?|photographs?|illustrations?|frames?|panels?|shots?|renders?|"
    r"variations?|versions?|scenes?|views?|portraits?|drawings?|paintings?|artworks?|"
    r"stills?|posters?|icons?|designs?|sketches?|pages?|slides?|cards?|stickers?|logos?"
)
_NUMBER = r"\d{1,3}|" + "|".join(sorted(map(re.escape, _NUMBER_WORDS), key=len, reverse=True))
# A number, up to three descriptive words, then an image noun: "4 images", "three consecutive
# cinematic frames". Numbers elsewhere ("1. a cat", "in 1990") do not state the count.
_COUNT_RE = re.compile(
    rf"\b(?P<n>{_NUMBER})(?:\s*[-\s]\s*[\w'-]+){{0,3}}?\s+(?:{_NOUNS})\b", re.IGNORECASE
)


def stated_image_count(prompt: str) -> int | None:
    """The number of images a prompt asks for, in digits or English words; None if it says none.

    >>> stated_image_count("Generate 3 images of a beautiful sunset")
    3
    >>> stated_image_count("Four consecutive storyboard panels of a heist")
    4
    """
    match = _COUNT_RE.search(prompt)
    if match is None:
        return None
    token = re.sub(r"\s+", " ", match.group("n").lower())
    return int(token) if token.isdigit() else _NUMBER_WORDS[token]
