"""A spec-faithful fake of the Messages API: a real HTTP server used by the tests, the benches
and ``router demo``."""
