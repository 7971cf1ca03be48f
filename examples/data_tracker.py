"""Count database lookups with an actor passed to tasks.

After the "Learning Ray" book, chapter 2 (examples 2-9 and 2-10): the database is put
once in the object store, 8 retrieve tasks read it and each tells a DataTracker
actor, whose handle they receive as an argument, that it was queried.

Run with:  python examples/data_tracker.py
"""

import time

import aioray as ray

ray.init()

database = [
    "Learning",
    "Ray",
    "Flexible",
    "Distributed",
    "Python",
    "for",
    "Data",
    "Science",
]

database_object_ref = ray.put(database)


@ray.remote
class DataTracker:
    def __init__(self):
        self._counts = 0

    def increment(self):
        self._counts += 1

    def counts(self):
        return self._counts


@ray.remote
def retrieve_tracker_task(item, tracker):
    obj_store_data = ray.get(database_object_ref)
    time.sleep(item / 10.0)
    tracker.increment.remote()
    return item, obj_store_data[item]


tracker = DataTracker.remote()

data_references = [retrieve_tracker_task.remote(item, tracker) for item in range(8)]
data = ray.get(data_references)
print("data:", data)
print("tracker counts:", ray.get(tracker.counts.remote()))

ray.shutdown()
