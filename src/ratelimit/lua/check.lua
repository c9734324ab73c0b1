-- All-or-nothing rate-limit check on the store's clock (after clock.lua and algorithm.lua).
return run_check(store_now())
