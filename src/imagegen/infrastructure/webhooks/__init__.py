"""Sending webhooks: the address policy and signed HTTP requests (httpx, standardwebhooks).

Import ``imagegen.infrastructure.webhooks.transport`` only where webhooks are sent: it loads
httpx and standardwebhooks.
"""
