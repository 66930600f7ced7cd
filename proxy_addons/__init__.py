"""hushgate's data path: mitmproxy addons that authenticate, route, reserve, forward,
stream/meter, settle, record and scrub — metadata only, never content.

``proxy_addons.pipeline.build_pipeline`` is the ordered list of addons;
``proxy_addons.runner.ProxyServer`` runs them in an in-process ``DumpMaster``.
"""
