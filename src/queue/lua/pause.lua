-- Pauses (ARGV[1] = 1) or resumes (0) a queue; a resume wakes waiting workers.
if ARGV[1] == '1' then
  redis.call('SET', P, '1')
else
  redis.call('DEL', P)
  redis.call('PUBLISH', R[2], 'j')
end
return 1
