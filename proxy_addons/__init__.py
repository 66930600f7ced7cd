"""hushgate's data path: one mitmproxy addon, :class:`proxy_addons.gateway.Gateway`, whose
hooks carry each request through small stages (intake → admit (authenticate, route,
reserve) → forward → meter → price → record), beside :class:`proxy_addons.safety.Safety`.
Metadata only, never content. ``proxy_addons.runner.ProxyServer`` runs them in an
in-process mitmproxy ``Master`` with only the addons a reverse proxy needs.
"""
