-- One slot's part of a check whose counters live in several Redis Cluster slots (after the
-- store clock and algorithm.lua): decides this slot's counters and, when all of them allow,
-- consumes at once (the reservation). The caller takes it back with refund.lua if another
-- slot denied; otherwise it simply stands.
return run_check(store_now(), true)
