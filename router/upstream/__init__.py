"""Stage 4: forward to the Messages API and relay the answer byte for byte.

``http1`` is the lean HTTP/1.1 client, ``pool`` holds its connections and decides which headers
cross, ``forward`` the attempts,
retries and fallbacks, ``relay`` the JSON and SSE relay and :class:`~router.upstream.relay.Outcome`,
``resilience`` the rules they follow (retry budget, circuit breakers, waits, admission), ``sse``
the reading of a stream as it passes.
"""
