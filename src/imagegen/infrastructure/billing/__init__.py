"""Billing adapters: the plan catalog (``plans``) and external usage meters."""
