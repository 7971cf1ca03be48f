"""Quickstart: start a local cluster, run a few tasks, put and get an object.

Run with:  python examples/quickstart.py
"""

import aioray as ray

ray.init(num_cpus=2)


@ray.remote
def square(x):
    return x * x


@ray.remote
def add(a, b):
    return a + b


# Tasks return ObjectRefs at once; ray.get waits for the values.
squares = [square.remote(i) for i in range(4)]
print("squares:", ray.get(squares))

# An ObjectRef can be passed to another task; it arrives as its value.
total = add.remote(squares[2], squares[3])
print("4 + 9 =", ray.get(total))

# Objects can be stored once with put and shared by reference.
ref = ray.put({"greeting": "hello", "from": "aioray"})
print("put/get:", ray.get(ref))

ray.shutdown()
print("done")
