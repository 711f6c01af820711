"""The model catalog as data: the shipped models.toml, a user's file over it, and lookups."""

from __future__ import annotations

import tomllib
from decimal import Decimal
from importlib import resources
from pathlib import Path

import pytest

from imagegen.domain.errors import ConfigurationError, UnknownModel, UnknownProvider
from imagegen.domain.models import ModelSpec, Operation
from imagegen.domain.negotiation import ImageRequest, negotiate
from imagegen.domain.pricing import (
    PerImage,
    PerMegapixel,
    ProviderCredits,
    TokenPriced,
    charge,
    quote,
)
from imagegen.domain.values import AspectRatio, Credits, ImageSize, Money, Prompt
from imagegen.infrastructure.catalog import StaticModelCatalog, load_catalog, load_specs

CENT = Decimal("0.01")
PROMPT = Prompt.parse("a lighthouse at dusk")


@pytest.fixture(scope="module")
def shipped() -> StaticModelCatalog:
    return load_catalog(local_credits_per_image=2)


def write(tmp_path: Path, text: str, name: str = "catalog.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- the shipped file ----------------------------------------------------------------------------


def test_the_shipped_file_is_versioned_and_dated() -> None:
    text = resources.files("imagegen.infrastructure.catalog").joinpath("models.toml").read_text()
    raw = tomllib.loads(text)

    assert raw["schema_version"] == 1
    assert raw["as_of"].isoformat() >= "2026-11-01"
    _, _, as_of = load_specs()
    assert as_of == raw["as_of"]


def test_the_shipped_catalog_lists_every_provider_model_of_the_issue(
    shipped: StaticModelCatalog,
) -> None:
    refs = {spec.ref for spec in shipped.all()}

    assert {
        "local/procedural",
        "openai/gpt-image-2",
        "openai/gpt-image-1.5",
        "openai/gpt-image-1-mini",
        "openai/gpt-image-1",
        "openai/dall-e-3",
        "replicate/black-forest-labs/flux-schnell",
        "replicate/black-forest-labs/flux-dev",
        "replicate/black-forest-labs/flux-1.1-pro",
        "replicate/black-forest-labs/flux-1.1-pro-ultra",
        "replicate/black-forest-labs/flux-kontext-pro",
        "replicate/black-forest-labs/flux-kontext-max",
        "replicate/black-forest-labs/flux-2-pro",
        "stability/stable-image-core",
        "stability/stable-image-ultra",
        "stability/sd3.5-large",
        "stability/stable-image-inpaint",
        "stability/stable-image-outpaint",
        "stability/stable-image-erase",
        "stability/stable-image-search-and-replace",
        "stability/stable-image-remove-background",
    } <= refs


def test_each_provider_defaults_to_a_current_model(shipped: StaticModelCatalog) -> None:
    defaults = {p: shipped.default_model(p).model for p in shipped.providers()}

    assert defaults == {
        "local": "procedural",
        "openai": "gpt-image-2",
        "replicate": "black-forest-labs/flux-schnell",
        "stability": "stable-image-core",
    }
    assert not any(shipped.default_model(p).deprecated for p in shipped.providers())
    assert shipped.get("openai", None).model == "gpt-image-2"


def test_retired_openai_models_are_listed_only_as_deprecated(shipped: StaticModelCatalog) -> None:
    for model in ("gpt-image-1", "dall-e-3"):
        spec = shipped.get("openai", model)
        assert spec.deprecated
        assert spec.shutdown_on is not None
        assert spec.replacement


def test_every_model_is_consistent_and_its_default_size_fits_its_own_rule(
    shipped: StaticModelCatalog,
) -> None:
    for spec in shipped.all():
        assert spec.problems() == [], spec.ref
        assert spec.size_rule.admits(spec.default_size), spec.ref
        assert spec.default_format in spec.formats, spec.ref
        priced = spec.quote(1, usd_per_credit=CENT)
        assert priced.exact, spec.ref


def test_every_provider_price_names_its_source_and_the_day_it_was_read(
    shipped: StaticModelCatalog,
) -> None:
    for spec in shipped.all():
        if spec.provider == "local":
            continue
        source = spec.pricing.source
        assert source.url.startswith("https://"), spec.ref
        assert source.as_of is not None, spec.ref
        assert source.as_of.isoformat() >= "2026-11-01", spec.ref


def test_openai_models_take_up_to_ten_images_and_stability_one_per_call(
    shipped: StaticModelCatalog,
) -> None:
    assert shipped.get("openai", "gpt-image-2").max_images_per_call == 10
    assert shipped.get("replicate", "black-forest-labs/flux-schnell").max_images_per_call == 4
    assert shipped.get("replicate", "black-forest-labs/flux-1.1-pro").max_images_per_call == 1
    for spec in shipped.all():
        if spec.provider == "stability":
            assert spec.max_images_per_call == 1, spec.ref


def test_gpt_image_2_accepts_any_size_within_openais_limits(shipped: StaticModelCatalog) -> None:
    rule = shipped.get("openai", "gpt-image-2").size_rule

    for ok in ("1024x1024", "1536x1024", "2048x1152", "3840x2160", "2160x3840", "1536x512"):
        assert rule.admits(ImageSize.parse(ok)), ok
    for bad in ("768x768", "3840x1024", "4096x2160", "1000x1000", "3840x2176"):
        assert not rule.admits(ImageSize.parse(bad)), bad


def test_gpt_image_1_5_takes_three_sizes(shipped: StaticModelCatalog) -> None:
    rule = shipped.get("openai", "gpt-image-1.5").size_rule

    assert set(rule.sizes) == {ImageSize(1024, 1024), ImageSize(1536, 1024), ImageSize(1024, 1536)}


def test_a_size_maps_to_the_nearest_aspect_ratio_a_flux_model_takes(
    shipped: StaticModelCatalog,
) -> None:
    schnell = shipped.get("replicate", "black-forest-labs/flux-schnell")

    fitted = negotiate(ImageRequest(prompt=PROMPT, size=ImageSize(1920, 1080)), schnell)

    assert fitted.size == ImageSize(1344, 768)
    assert schnell.aspect_ratio_for(fitted.size) == "16:9"
    assert fitted.warnings  # never silently
    assert schnell.size_rule.size_of(AspectRatio.parse("21:9")) == ImageSize(1536, 640)
    assert schnell.aspect_ratio_for(ImageSize(1536, 640)) == "21:9"


def test_the_stability_adapter_and_the_catalog_agree_on_prices_and_pixels(
    shipped: StaticModelCatalog,
) -> None:
    stability = pytest.importorskip("imagegen.infrastructure.providers.stability")

    for model_id, model in stability.MODELS.items():
        spec = shipped.get("stability", model_id)
        assert spec.operations == model.operations, model_id
        assert isinstance(spec.pricing, ProviderCredits)
        for operation in model.operations:
            assert spec.pricing.credits_for(operation.value) == model.credits(operation), (
                model_id,
                operation,
            )
        if model.operations == frozenset({Operation.GENERATE}):
            catalog_sizes = dict(
                zip(spec.size_rule.ratio_labels, spec.size_rule.sizes, strict=True)
            )
            adapter_sizes = {r: ImageSize(*wh) for r, wh in stability.OUTPUT_SIZES.items()}
            assert catalog_sizes == adapter_sizes, model_id


def test_the_edit_entry_prices_each_stability_edit_by_its_own_endpoint(
    shipped: StaticModelCatalog,
) -> None:
    edit = shipped.get("stability", "stable-image-edit")
    square = ImageSize(1024, 1024)

    def usd(operation: Operation) -> Money | None:
        return edit.quote(1, operation=operation, size=square).usd

    assert usd(Operation.OUTPAINT) == Money(Decimal("0.04"))
    assert usd(Operation.INPAINT) == Money(Decimal("0.05"))
    assert usd(Operation.REMOVE_BACKGROUND) == Money(Decimal("0.05"))


def test_the_local_model_is_priced_by_the_setting_not_the_file(
    shipped: StaticModelCatalog,
) -> None:
    local = shipped.get("local", None)

    assert local.quote(3).credits == Credits(6)
    assert local.quote(3).usd is None
    assert local.estimate(3) == Credits(6)  # the deprecated spelling still works


def test_a_model_can_be_named_without_its_provider(shipped: StaticModelCatalog) -> None:
    assert shipped.get(None, "gpt-image-2").ref == "openai/gpt-image-2"
    assert shipped.get(None, "black-forest-labs/flux-dev").provider == "replicate"
    assert shipped.get(None, "replicate/black-forest-labs/flux-dev").model == (
        "black-forest-labs/flux-dev"
    )
    assert shipped.get(None, "local/procedural").provider == "local"
    assert shipped.get("openai", "openai/gpt-image-2").model == "gpt-image-2"
    assert shipped.get(None, None).provider == "local"
    with pytest.raises(UnknownModel):
        shipped.get(None, "gpt-image-9")
    with pytest.raises(UnknownProvider):
        shipped.get(None, "nope/procedural")
    with pytest.raises(UnknownModel):
        shipped.get("openai", "black-forest-labs/flux-dev")


def test_a_generation_on_the_shipped_catalog_records_the_catalog_cost(
    shipped: StaticModelCatalog,
) -> None:
    spec = shipped.get("openai", "gpt-image-2")
    request = negotiate(ImageRequest(prompt=PROMPT, n=2, quality="medium"), spec)
    priced = quote(
        spec.pricing,
        n=request.n,
        size=request.size,
        quality=request.quality,
        usd_per_credit=CENT,
        prompt_chars=len(PROMPT.text),
    )

    class Reported:
        input_text_tokens = 9
        input_image_tokens = 0
        output_image_tokens = 2 * 1756
        output_text_tokens = 0

    billed = charge(
        spec.pricing,
        images=2,
        size=request.size,
        quality=request.quality,
        usd_per_credit=CENT,
        usage=Reported(),
        quoted=priced,
    )

    assert billed.usd is not None
    assert abs(billed.usd.amount - Decimal("0.106")) <= Decimal("0.001")
    assert billed.credits == priced.credits == Credits(12)


# --- a user's file over it ---------------------------------------------------------------------

OVERRIDE = """
schema_version = 1

[providers.replicate]
default_model = "black-forest-labs/flux-dev"

[[models]]
provider = "replicate"
model = "black-forest-labs/flux-schnell"
max_images_per_request = 4
[models.pricing]
scheme = "per_image"
usd = 0.0035
source = "https://replicate.com/black-forest-labs/flux-schnell"
as_of = 2026-12-01

[[models]]
provider = "replicate"
model = "acme/brand-diffusion"
display_name = "ACME brand model"
operations = ["generate"]
formats = ["png", "jpg"]
default_size = "1024x1024"
max_images_per_call = 1
max_images_per_request = 4
supports_seed = true
[models.sizes]
min_side = 512
max_side = 1536
multiple_of = 64
[models.pricing]
scheme = "per_megapixel"
usd_per_megapixel = 0.02
round_up = false
note = "our negotiated rate"
as_of = 2026-11-30
"""


def test_a_user_file_replaces_a_price_and_adds_a_model(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, OVERRIDE), default_provider="replicate")

    schnell = catalog.get("replicate", "black-forest-labs/flux-schnell")
    assert schnell.pricing == PerImage(usd=Decimal("0.0035"), source=schnell.pricing.source)
    assert schnell.max_images_per_request == 4  # overridden
    assert schnell.max_images_per_call == 4  # kept from the shipped entry
    assert schnell.size_rule.ratio_labels[0] == "1:1"  # kept
    added = catalog.get("replicate", "acme/brand-diffusion")
    assert isinstance(added.pricing, PerMegapixel)
    assert added.quote(1).per_image_usd == Money(Decimal("0.02"))
    assert catalog.get(None, None).model == "black-forest-labs/flux-dev"
    assert catalog.get("openai", "gpt-image-2").quote(1).exact  # the rest is untouched


def test_a_user_file_may_reprice_a_token_model(tmp_path: Path) -> None:
    text = """
schema_version = 1
[[models]]
provider = "openai"
model = "gpt-image-2"
[models.pricing]
scheme = "tokens"
text_input_usd_per_mtok = 4
image_input_usd_per_mtok = 6
image_output_usd_per_mtok = 24
output_tokens = { formula = "gpt-image-2", factors = { low = 16, medium = 48, high = 96 } }
source = "https://example.com/our-enterprise-rates"
as_of = 2026-11-30
"""
    spec = load_catalog(write(tmp_path, text)).get("openai", "gpt-image-2")

    assert isinstance(spec.pricing, TokenPriced)
    assert spec.quote(1).per_image_usd == Money(Decimal("0.042144"))  # 1756 × $24/1M


@pytest.mark.parametrize(
    ("text", "in_message", "field"),
    [
        pytest.param(
            OVERRIDE.replace("usd = 0.0035", 'usd = "cheap"'),
            "replicate/black-forest-labs/flux-schnell",
            "pricing.per_image.usd",
            id="bad-price",
        ),
        pytest.param(
            OVERRIDE.replace('scheme = "per_image"', 'scheme = "per_hour"'),
            "replicate/black-forest-labs/flux-schnell",
            "pricing",
            id="unknown-scheme",
        ),
        pytest.param(
            OVERRIDE.replace('operations = ["generate"]', 'operations = ["paint"]'),
            "replicate/acme/brand-diffusion",
            "operations[0]",
            id="unknown-operation",
        ),
        pytest.param(
            OVERRIDE.replace('default_size = "1024x1024"', 'default_size = "huge"'),
            "replicate/acme/brand-diffusion",
            "default_size",
            id="bad-size",
        ),
        pytest.param(
            OVERRIDE.replace('default_size = "1024x1024"', 'default_size = "2048x2048"'),
            "does not fit its own size rule",
            None,
            id="default-size-outside-rule",
        ),
        pytest.param(
            OVERRIDE.replace('note = "our negotiated rate"\n', ""),
            "a price needs a `source`",
            "pricing.per_megapixel",
            id="unsourced-price",
        ),
        pytest.param(
            OVERRIDE.replace("supports_seed = true", "supports_seed = true\ncolour = 'red'"),
            "colour",
            "colour",
            id="unknown-field",
        ),
        pytest.param(
            OVERRIDE.replace("schema_version = 1", "schema_version = 2"),
            "schema_version",
            "schema_version",
            id="future-schema",
        ),
        pytest.param(
            OVERRIDE.replace('"black-forest-labs/flux-dev"', '"black-forest-labs/flux-9"'),
            "providers.replicate.default_model",
            "providers.replicate.default_model",
            id="unknown-default",
        ),
        pytest.param(
            OVERRIDE.replace(
                "schema_version = 1",
                'schema_version = 1\n[providers.openai]\ndefault_model = "dall-e-3"',
            ),
            "deprecated",
            "providers.openai.default_model",
            id="deprecated-default",
        ),
        pytest.param("schema_version = [", "not valid TOML", None, id="not-toml"),
    ],
)
def test_a_broken_user_file_is_refused_with_the_file_the_model_and_the_field(
    tmp_path: Path, text: str, in_message: str, field: str | None
) -> None:
    path = write(tmp_path, text)

    with pytest.raises(ConfigurationError) as raised:
        load_catalog(path)

    error = raised.value
    assert str(path) in error.message
    assert error.details["file"] == str(path)
    assert in_message in error.message
    if field is not None:
        assert error.details["field"] == field
        assert field in error.message


def test_a_missing_user_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_catalog(tmp_path / "nope.toml")


def test_a_model_listed_twice_in_one_file_is_refused(tmp_path: Path) -> None:
    entry = '[[models]]\nprovider = "openai"\nmodel = "gpt-image-2"\nnotes = "x"\n'
    path = write(tmp_path, "schema_version = 1\n" + entry + entry)

    with pytest.raises(ConfigurationError, match="listed twice"):
        load_catalog(path)


def test_the_container_settings_point_at_the_user_file(tmp_path: Path) -> None:
    from imagegen.bootstrap.settings import Settings

    path = write(tmp_path, OVERRIDE)
    settings = Settings(catalog_file=path, data_dir=tmp_path)

    catalog = load_catalog(
        settings.catalog_file,
        local_credits_per_image=settings.local_credits_per_image,
        default_provider=settings.default_provider,
    )

    assert catalog.get("replicate", "acme/brand-diffusion").display_name == "ACME brand model"
    spec: ModelSpec = catalog.get("local", "procedural")
    assert spec.quote(1, usd_per_credit=settings.usd_per_credit).credits == Credits(1)
