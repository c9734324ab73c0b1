-- Takes back a reservation of reserve.lua (after the store clock and algorithm.lua).
return run_refund(store_now())
