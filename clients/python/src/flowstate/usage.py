"""Usage metering (`flowstate.v1.UsageService`): `record` buffers, a background flusher sends.

    fs.usage.record("llm_tokens", "ws-42", 1200, dimensions={"model": "gpt-4o"}, unique="alice")
    fs.usage.query("llm_tokens", "ws-42", since, granularity="hour")
    fs.usage.top("llm_tokens", timedelta(days=1), n=10)

`record` never waits for the network: it adds the event to an in-process buffer, summed per
(metric, subject, dimensions, unique value), and a background thread (an asyncio task for
`AsyncClient`) sends the buffer every `flush_interval` seconds, or at once when it holds
`max_batch` entries. An event counts in the buckets of the moment its flush reaches flowstate
(by flowstate's store clock), so buffering moves it by at most `flush_interval`.

Every batch carries a random `batch_id`: a batch whose call failed (flowstate unreachable, a
deadline) is kept as it is and sent again, with the same id, before anything newer, and
flowstate counts each metric and subject of a batch once however often it arrives (within its
`usage.dedup_window`, 10 minutes). A batch flowstate refuses as invalid is sent again without the
events it named (those are counted in `rejected` and logged). At most `max_buffer` entries wait
(buffered or to resend); beyond that events are dropped and counted in `dropped`. `flush()`
sends now; closing the client flushes. `record` checks its arguments' types at once.
"""


from flowstate._async.usage import AsyncUsage
from flowstate._sync.usage import Usage
from flowstate.types import GRANULARITIES, MAX_AMOUNT, TopEntry, UsagePoint, UsageSeries

__all__ = ["GRANULARITIES", "MAX_AMOUNT", "AsyncUsage", "TopEntry", "Usage", "UsagePoint", "UsageSeries"]
