-- Refresh or release a job's run lock, only by the holder of its token.
-- KEYS: 1 the lock
-- ARGV: 1 token, 2 ttl in ms ('0' releases)
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then return redis.call('DEL', KEYS[1]) end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
