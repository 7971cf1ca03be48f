"""Ray's ``ray.experimental`` names that aioray supports."""
