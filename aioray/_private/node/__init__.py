"""Floor node: starting and finding a node's daemons, and diagnostics from outside them."""
