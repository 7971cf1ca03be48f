"""Ray's ``ray.autoscaler`` names that aioray supports (``sdk.request_resources``)."""
