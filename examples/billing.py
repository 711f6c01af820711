"""Plans, quotas, budgets, refunds and a usage report that reconciles with the ledger —
offline, with the local provider.

Run: python examples/billing.py   (uses IMAGEGEN_DATA_DIR, like every example)
"""

from imagegen import BudgetExceeded, ImageGen, QuotaExceeded

with ImageGen() as gen:
    print("plans:", ", ".join(f"{p.id} ({p.included_images}/month)" for p in gen.plans()))
    gen.subscribe("free")  # 10 images a month, no overage

    first = gen.generate("a lighthouse at dawn", n=4, size="256x256", project="brochure")
    print(f"4 images on the free plan cost {first.credits_charged} credits")
    gen.generate("a lighthouse at dusk", n=4, size="256x256", project="brochure")
    try:
        gen.generate("a lighthouse in fog", n=4, size="256x256")
    except QuotaExceeded as error:
        print("refused:", error)

    gen.subscribe("pro")  # at once: 200 a month, the month's 8 images already count
    gen.set_budget(project="brochure", images=10)
    try:
        gen.generate("one more lighthouse", n=3, size="256x256", project="brochure")
    except BudgetExceeded as error:
        print("refused:", error)

    refund = gen.refund(first.id, reason="wrong colours", restore_quota=True)
    print(f"refund gave back {-refund.event.included_images} images of quota")

    report = gen.usage_report(gen.subscription().started_at.strftime("%Y-%m"), by=["project"])
    for row in report.rows:
        print(f"project {row.key[0]}: {row.images} images, {row.credits} credits")
    print("billing verify:", "consistent" if gen.verify_billing().ok else "BROKEN")
    print(report.to_csv().splitlines()[0])
