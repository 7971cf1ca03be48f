"""Retrieve items from a small database with tasks, collecting results as they finish.

After the "Learning Ray" book, chapter 2: the database is put once, 8 retrieve
tasks sleep for varying times, ray.wait hands back results two at a time, and
follow-up tasks take the retrieve tasks' ObjectRefs as arguments.

Run with:  python examples/retrieve_wait.py
"""

import time

import aioray as ray

database = [
    "Learning",
    "Ray",
    "Flexible",
    "Distributed",
    "Python",
    "for",
    "Machine",
    "Learning",
]


def retrieve(item, db):
    time.sleep(item / 10.0)
    return item, db[item]


@ray.remote
def retrieve_task(item, db):
    return retrieve(item, db)


@ray.remote
def follow_up_task(retrieve_result, db):
    original_item, _ = retrieve_result
    follow_up_result = retrieve(original_item + 1, db)
    return retrieve_result, follow_up_result


ray.init()
db_ref = ray.put(database)  # the database is stored once and shared

start = time.time()
pending = [retrieve_task.remote(item, db_ref) for item in range(8)]
all_data = []
while pending:
    finished, pending = ray.wait(pending, num_returns=min(2, len(pending)), timeout=7.0)
    data = ray.get(finished)
    print(f"Runtime: {time.time() - start:.2f} seconds, data: {data}")
    all_data.extend(data)

print("all items:", sorted(all_data) == [(i, word) for i, word in enumerate(database)])

retrieve_refs = [retrieve_task.remote(item, db_ref) for item in [0, 2, 4, 6]]
follow_up_refs = [follow_up_task.remote(ref, db_ref) for ref in retrieve_refs]
for result in ray.get(follow_up_refs):
    print("follow-up:", result)

ray.shutdown()
