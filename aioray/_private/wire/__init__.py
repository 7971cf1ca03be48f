"""Floor wire: what crosses a process boundary (ids, framing, auth, pickling, the shm
segment layout, the task spec); no asyncio, and nothing from the floors above."""
