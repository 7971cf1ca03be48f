"""The autoscaler: grows and shrinks a cluster from its resource demand (issue 20)."""
