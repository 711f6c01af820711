"""Image inspection with Pillow: the gate every provider's bytes pass before we trust them."""

from __future__ import annotations

import io
import os
import threading
from typing import Final

from PIL import Image

from imagegen.application.ports import ImageInfo
from imagegen.domain.errors import ProviderProtocolError
from imagegen.domain.values import ImageFormat

DEFAULT_MAX_PIXELS: Final = 64 * 1024 * 1024

# Only these decoders are tried: a provider has no business sending TIFF or PSD, and every extra
# decoder is extra attack surface for bytes we did not produce.
_FORMATS: Final = {"PNG": ImageFormat.PNG, "JPEG": ImageFormat.JPEG, "WEBP": ImageFormat.WEBP}


class PillowInspector:
    """Decodes image bytes completely and reports their format, size and transparency.

    ``max_pixels`` bounds width x height before any pixel is decoded, so a tiny file that
    claims to be 100 000 x 100 000 is refused instead of exhausting memory. Pillow's own
    global limit (``Image.MAX_IMAGE_PIXELS``) still applies on top: above twice that limit
    Pillow raises ``DecompressionBombError``, which we report the same way. We neither change
    that global nor wrap ``Image.open`` in ``warnings.catch_warnings()`` (both are process-wide
    and this runs in worker threads); our own check makes Pillow's warning redundant, and
    should a warnings filter turn it into an exception we catch that too.

    At most ``max_concurrent`` images (default: the CPUs this process may use) are decoded at
    once; callers in more threads wait their turn. Decoding is CPU-bound and Pillow releases
    the GIL while it decodes, so more decodes than CPUs finish no sooner: they only crowd out
    the event loop's thread, which then sends the next provider requests late.
    """

    def __init__(
        self, max_pixels: int = DEFAULT_MAX_PIXELS, max_concurrent: int | None = None
    ) -> None:
        if max_pixels < 1:
            raise ValueError("max_pixels must be at least 1")
        if max_concurrent is not None and max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._max_pixels = max_pixels
        self._slots = threading.BoundedSemaphore(max_concurrent or _usable_cpus())

    @property
    def max_pixels(self) -> int:
        return self._max_pixels

    def inspect(self, data: bytes) -> ImageInfo:
        if not data:
            raise ProviderProtocolError("The provider returned an empty image.")
        with self._slots:
            return self._inspect(data)

    def _inspect(self, data: bytes) -> ImageInfo:
        try:
            with Image.open(io.BytesIO(data), formats=list(_FORMATS)) as image:
                width, height = image.size
                if width < 1 or height < 1:
                    raise ProviderProtocolError("The provider returned an image with no pixels.")
                if width * height > self._max_pixels:
                    raise ProviderProtocolError(
                        f"The provider returned a {width}x{height} image, more than the "
                        f"{self._max_pixels} pixels allowed (a possible decompression bomb).",
                        width=width,
                        height=height,
                        max_pixels=self._max_pixels,
                    )
                # load() decodes every pixel: truncated or corrupt data fails here, not later
                # when a user downloads the asset.
                image.load()
                fmt = _FORMATS.get(image.format or "")
                has_alpha = image.has_transparency_data
        except ProviderProtocolError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ProviderProtocolError(
                "The provider returned an image too large to decode safely "
                "(a possible decompression bomb)."
            ) from exc
        except Exception as exc:
            # Decoders raise a zoo of types on hostile input (OSError, SyntaxError, ValueError,
            # struct.error, zlib.error, EOFError...); all of them mean "not a valid image".
            raise ProviderProtocolError(
                "The provider returned data that is not a complete PNG, JPEG or WebP image.",
                reason=type(exc).__name__,
            ) from exc
        if fmt is None:  # pragma: no cover - Image.open(formats=...) already restricts this
            raise ProviderProtocolError("The provider returned an image in an unsupported format.")
        return ImageInfo(format=fmt, width=width, height=height, has_alpha=has_alpha)


def _usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
