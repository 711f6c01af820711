"""Billing adapters: the plan catalog (``plans``) and the external usage meter (Stripe)."""
