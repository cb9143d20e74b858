"""Client-facing wire formats: one package per inbound API, each a decoder and an encoder.

A decoder turns a request body into the canonical ``ChatRequest``; an encoder turns the service's
normalised deltas (``service.state``), usage and failures into that API's bytes. Nothing here knows about
keys, policies or upstreams, so a new inbound API is a package here plus a route at the edge.
"""
