"""The Managed Agents HTTP API: an HTTP gateway onto the bus for programs written for the hosted
service with the official ``anthropic`` SDK (``client.beta.*``), unchanged but for ``base_url``.

The ``api`` role holds no agent logic and no state of its own: it reads and writes the bus like any
other client (records in the ``<key>_api`` KV bucket, memory stores, the session log), so more
``api`` processes serve more requests. Its parts: ``errors`` (the SDK's error envelope), ``auth``
(API keys, each mapped to a workspace), ``http`` (the app, bodies, pages), ``records`` (per-workspace
resources in KV) and one module per resource. docs/architecture.md, "The HTTP API".
"""
