"""Billing adapters: the external usage meter (Stripe)."""
