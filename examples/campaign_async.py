"""A campaign set with the asyncio API: one brief, every social format, generated
concurrently, each image saved to the DAM with the campaign's tags.

Run: python examples/campaign_async.py
"""

import asyncio

from imagegen import AsyncImageGen

BRIEF = "autumn sale, warm orange leaves, clean product background"
FORMATS = {"square": "1:1", "story": "9:16", "banner": "16:9", "portrait": "4:5"}


async def main() -> None:
    async with AsyncImageGen() as gen:
        estimate = gen.estimate(n=1, aspect_ratio="16:9")
        print(f"each image costs {estimate.credits} credit(s) on {estimate.provider}")

        results = await asyncio.gather(
            *(
                gen.generate(
                    BRIEF,
                    aspect_ratio=ratio,
                    format="webp",
                    seed=2026,
                    tags=["campaign:autumn-sale", f"format:{name}"],
                    idempotency_key=f"autumn-sale-{name}",  # re-running charges nothing
                )
                for name, ratio in FORMATS.items()
            )
        )
        for name, result in zip(FORMATS, results, strict=True):
            image = result.images[0]
            replay = " (replayed)" if result.replayed else ""
            print(f"{name:>8}: {image.width}x{image.height} {image.path.name}{replay}")

        page = await gen.assets(tag="campaign:autumn-sale", limit=20)
        print(f"{len(page.items)} assets tagged campaign:autumn-sale")


asyncio.run(main())
