-- Record a new queued job, unless its idempotency key already names one.
-- KEYS: 1 job hash, 2 job index (zset), 3 idempotency key ('' when the request has none), 4 unsent jobs (zset)
-- ARGV: 1 job id, 2 created_at, 3.. field/value pairs
-- Returns {1, job id} when created, {0, the existing job's id} when the key was used before.
if KEYS[3] ~= '' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return {0, existing} end
  redis.call('SET', KEYS[3], ARGV[1])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
return {1, ARGV[1]}
