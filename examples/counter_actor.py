"""A stateful Counter actor that keeps a history of its operations.

The seed's actor example: the actor's __init__ runs in a worker process of its own;
each increment call changes its state, and calls from one caller run in the order
they were submitted, so the history comes back in that order.

Run with:  python examples/counter_actor.py
"""

import aioray as ray

ray.init(num_cpus=2)


@ray.remote
class Counter:
    """A distributed counter: state lives in the actor, across calls."""

    def __init__(self):
        self.count = 0
        self.history = []

    def increment(self, delta: int = 1) -> int:
        self.count += delta
        self.history.append(("increment", delta, self.count))
        return self.count

    def get_count(self) -> int:
        return self.count

    def get_history(self) -> list:
        return self.history


# Creating the actor returns a handle at once; the actor starts in its own worker.
counter_actor = Counter.remote()

# Method calls return ObjectRefs, like tasks.
increment_refs = [counter_actor.increment.remote(i) for i in range(1, 6)]
print("increment results:", ray.get(increment_refs))

final_count = ray.get(counter_actor.get_count.remote())
history = ray.get(counter_actor.get_history.remote())
print("final count:", final_count)
print("history:", history)

ray.shutdown()
