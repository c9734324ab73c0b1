"""The semantic cache through the Python client: get_or_compute computes once and then answers
near-duplicate prompts from the cache, unrelated ones miss, an outage computes instead of
failing, and an entry stored through one replica is found through another whose clock is 90 s
ahead."""

import math
import random
from datetime import timedelta

import pytest

import flowstate
from conftest import SERVER_CONFIG, ev, serving, skewed_env, start_flowstate, stop, wait_until

DIM = 64


def unit(rng: random.Random) -> list[float]:
    v = [rng.uniform(-1, 1) for _ in range(DIM)]
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def rephrased(rng: random.Random, v: list[float], ratio: float = 0.1) -> list[float]:
    """`v` plus noise of `ratio` times a component's typical size (cosine ≈ 0.995 at 0.1)."""
    a = ratio * math.sqrt(12) / math.sqrt(DIM)
    return [x + rng.uniform(-0.5, 0.5) * a for x in v]


async def test_get_or_compute_computes_once_then_answers_near_duplicates(fs):
    rng = random.Random()
    prompt = unit(rng)
    calls = []

    def llm() -> bytes:
        calls.append(1)
        return b"Paris"

    answer = await ev(fs.semantic.get_or_compute("py_answers", prompt, llm, metadata={"model": "m1"}))
    assert answer == b"Paris" and len(calls) == 1
    for _ in range(5):
        again = await ev(fs.semantic.get_or_compute("py_answers", rephrased(rng, prompt), llm))
        assert again == b"Paris"
    assert len(calls) == 1, "a near-duplicate prompt was computed again"
    hit = await ev(fs.semantic.get("py_answers", rephrased(rng, prompt)))
    assert hit is not None and hit.value == b"Paris" and hit.metadata == {"model": "m1"}
    assert 0.95 < hit.similarity <= 1.0001
    assert timedelta(minutes=59) < hit.ttl_remaining <= timedelta(hours=1)
    # An unrelated prompt misses (and is computed).
    other = await ev(fs.semantic.get_or_compute("py_answers", unit(rng), lambda: b"other"))
    assert other == b"other"
    assert await ev(fs.semantic.get("py_answers", unit(rng))) is None


async def test_set_get_delete_and_thresholds(fs):
    rng = random.Random()
    v = unit(rng)
    entry = await ev(fs.semantic.set("py_answers", v, b"x", ttl=timedelta(minutes=5)))
    assert entry > 0
    # Cosine ≈ 0.9 from v: under a strict threshold, over a loose one.
    far = rephrased(rng, v, 0.48)
    assert await ev(fs.semantic.get("py_answers", far, min_similarity=0.99)) is None
    hit = await ev(fs.semantic.get("py_answers", far, min_similarity=0.5))
    assert hit is not None and hit.id == entry
    assert await ev(fs.semantic.delete("py_answers", entry)) is True
    assert await ev(fs.semantic.delete("py_answers", entry)) is False
    assert await ev(fs.semantic.get("py_answers", v)) is None


async def test_bad_calls_raise(fs):
    rng = random.Random()
    with pytest.raises(flowstate.InvalidArgument):
        await ev(fs.semantic.get("py_answers", [1.0, 2.0]))
    with pytest.raises(flowstate.InvalidArgument):
        await ev(fs.semantic.set("py_answers", [math.nan] * DIM, b"x"))
    with pytest.raises(flowstate.InvalidArgument):
        await ev(fs.semantic.get("py_answers", ["not a number"] * DIM))
    with pytest.raises(flowstate.NotFound):
        await ev(fs.semantic.get("no_such_namespace", unit(rng)))
    # A wrong dimension is the caller's bug: get_or_compute raises rather than hide it.
    with pytest.raises(flowstate.InvalidArgument):
        await ev(fs.semantic.get_or_compute("py_answers", [0.5] * 3, lambda: b"x"))


async def test_a_computed_value_is_returned_even_when_it_cannot_be_stored(fs):
    rng = random.Random()
    v = unit(rng)
    too_big = b"x" * (256 * 1024 + 1)  # over the namespace's max_value_bytes
    calls = []

    def llm() -> bytes:
        calls.append(1)
        return too_big

    assert await ev(fs.semantic.get_or_compute("py_answers", v, llm)) == too_big
    assert len(calls) == 1
    assert await ev(fs.semantic.get("py_answers", v)) is None


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_an_outage_computes_instead_of_failing(kind):
    rng = random.Random()
    # Nothing listens there: every call is UNAVAILABLE.
    address = "127.0.0.1:9"
    if kind == "sync":
        with flowstate.Client(address, timeout=0.5) as fs:
            assert fs.semantic.get_or_compute("py_answers", unit(rng), lambda: b"computed") == b"computed"
    else:
        async with flowstate.AsyncClient(address, timeout=0.5) as fs:

            async def llm() -> bytes:
                return b"computed"

            assert await fs.semantic.get_or_compute("py_answers", unit(rng), llm) == b"computed"


def test_an_entry_stored_through_one_replica_is_found_through_another(redis_server, target):
    redis_url, _ = redis_server

    def ready(address: str) -> bool:
        import grpc

        with grpc.insecure_channel(address) as channel:
            return serving(channel)

    proc, other, _ = start_flowstate(redis_url, SERVER_CONFIG, ready, env_extra=skewed_env("+90"))
    try:
        rng = random.Random()
        with flowstate.Client(target) as a, flowstate.Client(other) as b:
            for i in range(20):
                v = unit(rng)
                entry = a.semantic.set("py_answers", v, f"answer {i}".encode())
                found = wait_until(lambda: (h := b.semantic.get("py_answers", rephrased(rng, v))) is not None
                                   and h.id == entry, 5)
                assert found, f"entry {i} stored through A not found through B"
            # The TTL is the store's: the replica 90 s ahead does not see it shortened.
            hit = b.semantic.get("py_answers", v)
            assert hit is not None and hit.ttl_remaining > timedelta(minutes=59)
    finally:
        stop(proc)
