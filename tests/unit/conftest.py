"""The unit tests: pure floors (state, policies, framing) and service tests on loopback
sockets. No cluster, no daemon process, hence no process scan after each test; the
folder runs in seconds, before the end-to-end suite (tests/e2e)."""
