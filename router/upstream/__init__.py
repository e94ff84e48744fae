"""Stage 4: forward to the Messages API, with retries, fallbacks and circuit breakers, and relay
the answer byte for byte."""
