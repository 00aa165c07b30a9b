"""The transport: the only package that imports ``nats``.

Connection and publishing (``connection``), subjects and resource names (``subjects``), the codec,
provisioning of streams/consumers/buckets (``provision``), the embedded nats-server (``server``), the
shared filesystem on the object store (``workspace``), the actor runtime (``runtime``) and the error
hierarchy (``errors``).
"""
