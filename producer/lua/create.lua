-- Record a new queued job, unless its idempotency key already names one or its tenant is at its cap of queued jobs.
-- KEYS: 1 job hash, 2 job index (zset), 3 idempotency key ('' when the request has none), 4 unsent jobs (zset),
--       5 the tenant's job index ('' for no tenant), 6 the tenant's queued jobs (set; '' for no tenant)
-- ARGV: 1 job id, 2 created_at, 3 the tenant's cap on queued jobs (0: none), 4.. field/value pairs
-- Returns {1, job id} when created, {0, the existing job's id} when the key was used before,
-- {-1, jobs the tenant has queued} at its cap.
if KEYS[3] ~= '' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return {0, existing} end
end
if KEYS[6] ~= '' and tonumber(ARGV[3]) > 0 then
  local queued = redis.call('SCARD', KEYS[6])
  if queued >= tonumber(ARGV[3]) then return {-1, tostring(queued)} end
end
if KEYS[3] ~= '' then redis.call('SET', KEYS[3], ARGV[1]) end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
if KEYS[5] ~= '' then
  redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
  redis.call('SADD', KEYS[6], ARGV[1])
end
return {1, ARGV[1]}
