"""Estimate pi by Monte Carlo sampling, spread over 4 tasks.

Run with:  python examples/monte_carlo_pi.py
"""

import math

import numpy as np

import aioray as ray

NUM_TASKS = 4
SAMPLES_PER_TASK = 2_000_000


@ray.remote
def count_inside(num_samples, seed):
    """Throw darts at the unit square; count those inside the quarter circle."""
    rng = np.random.default_rng(seed)
    x = rng.random(num_samples)
    y = rng.random(num_samples)
    return int(np.count_nonzero(x * x + y * y <= 1.0))


ray.init()
refs = [count_inside.remote(SAMPLES_PER_TASK, seed) for seed in range(NUM_TASKS)]
inside = sum(ray.get(refs))
estimate = 4.0 * inside / (NUM_TASKS * SAMPLES_PER_TASK)
print(f"pi estimate: {estimate:.6f} from {NUM_TASKS} tasks")
print(f"error: {abs(estimate - math.pi):.6f}")
ray.shutdown()
