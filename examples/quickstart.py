"""Generate images offline, keep one in the DAM, and see what it cost.

Run: python examples/quickstart.py   (uses IMAGEGEN_DATA_DIR, default: your user data dir)
"""

from imagegen import ImageGen, InvalidInput

with ImageGen() as gen:
    print("available before:", gen.balance().available, "credits")

    result = gen.generate("a red fox in the snow, watercolor", n=2, size="512x512", seed=7)
    print(f"{result.id}: {result.status}, charged {result.credits_charged} credits")
    for image in result.images:
        print(f"  {image.id} {image.width}x{image.height} {image.format} -> {image.path}")

    asset = gen.save_to_dam(result.images[0], tags=["winter", "fox"], title="Fox in snow")
    print(f"saved {asset.id} with tags {', '.join(asset.tags)}")
    print("provenance:", asset.provenance["digital_source_type"])

    page = gen.history(text="fox", limit=5)
    print("history matching 'fox':", [g.id for g in page.items])

    estimate = gen.estimate(n=4, size="1024x1024")
    print(f"4 more images would cost {estimate.credits} credits")

    try:
        gen.generate("a fox", size="0x0")
    except InvalidInput as error:  # bad input is refused before anything is charged
        print("refused:", error)

    print("available after:", gen.balance().available, "credits")
