"""Put a 1000x1000 array once, average it in 4 chunk tasks, compare with np.mean.

The array goes to the shared-memory object store once; every task reads it
zero-copy through the same ObjectRef.

Run with:  python examples/array_chunks.py
"""

import numpy as np

import aioray as ray

NUM_CHUNKS = 4


@ray.remote
def chunk_sum(array, start, stop):
    """Sum of rows [start, stop) and how many values that was."""
    block = array[start:stop]
    return float(block.sum()), block.size


ray.init()
data = np.random.default_rng(0).random((1000, 1000))
data_ref = ray.put(data)  # stored once, shared by all tasks

bounds = np.linspace(0, data.shape[0], NUM_CHUNKS + 1, dtype=int)
refs = [chunk_sum.remote(data_ref, int(bounds[i]), int(bounds[i + 1])) for i in range(NUM_CHUNKS)]
partials = ray.get(refs)
chunked_mean = sum(s for s, _ in partials) / sum(n for _, n in partials)
direct_mean = float(np.mean(data))

print(f"chunks: {len(partials)}")
print(f"mean of chunks: {chunked_mean:.12f}")
print(f"np.mean:        {direct_mean:.12f}")
print(f"match: {bool(np.isclose(chunked_mean, direct_mean))}")
ray.shutdown()
