"""The machinery behind the public API, one folder per floor (imports point down):
node > owner > core > rpc > wire. docs/architecture.md, "Floors", lists every module."""
