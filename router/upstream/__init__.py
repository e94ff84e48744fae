"""Stage 4: forward to the Messages API and relay the answer byte for byte.

``pool`` holds the connections (the only module that imports aiohttp), ``forward`` the attempts,
retries and fallbacks, ``relay`` the JSON and SSE relay and :class:`~router.upstream.relay.Outcome`,
``resilience`` the rules they follow (retry budget, circuit breakers, waits, admission), ``sse``
the reading of a stream as it passes.
"""
