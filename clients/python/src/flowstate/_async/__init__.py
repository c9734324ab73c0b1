"""The asyncio client, and the one source of the sync client: `clients/python/unasync.py`
writes `flowstate/_sync` from these modules. Import them through `flowstate.aio`,
`flowstate.queues`, `flowstate.semantic` and `flowstate.usage`."""
