-- Apply one named transition of producer/states.py to a job, atomically, only from one of its source states.
-- KEYS: 1 job hash, 2 events channel, 3 running jobs (set), 4 dead letters (zset),
--       5 the job's idempotency key ('' when it has none), 6 its tenant's queued jobs (set; '' for no tenant),
--       7 the webhook outbox (stream)
-- ARGV: 1 target state, 2 source states (comma separated), 3 ttl to set in seconds (0: none),
--       4 '1' to count an attempt, 5 queue-deadline rule ('' ignore, 'not_passed', 'passed'), 6 now,
--       7 '1' to dead-letter, 8 '1' to release the idempotency key, 9 job id,
--       10 the webhook event ('' for none), 11 seconds between two progress webhooks, 12.. field/value pairs
-- Returns {'ok', the whole record flattened}, or {'missing' | 'refused' | 'overdue' | 'not_overdue', current state}.
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return {'missing', ''} end
if not string.find(',' .. ARGV[2] .. ',', ',' .. current .. ',', 1, true) then return {'refused', current} end
if ARGV[5] ~= '' and current == 'queued' then
  local deadline = tonumber(redis.call('HGET', KEYS[1], 'expires_at') or '')
  local passed = deadline ~= nil and deadline < tonumber(ARGV[6])
  if ARGV[5] == 'not_passed' and passed then return {'overdue', current} end
  if ARGV[5] == 'passed' and not passed then return {'not_overdue', current} end
end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
if ARGV[1] == 'running' then redis.call('SADD', KEYS[3], ARGV[9]) else redis.call('SREM', KEYS[3], ARGV[9]) end
if KEYS[6] ~= '' and ARGV[1] ~= 'queued' then redis.call('SREM', KEYS[6], ARGV[9]) end
if #ARGV > 11 then redis.call('HSET', KEYS[1], unpack(ARGV, 12)) end
if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
if ARGV[7] == '1' then redis.call('ZADD', KEYS[4], ARGV[6], ARGV[9]) end
if ARGV[8] == '1' and KEYS[5] ~= '' then redis.call('DEL', KEYS[5]) end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  if KEYS[5] ~= '' then redis.call('EXPIRE', KEYS[5], ttl) end
end
-- The webhook outbox: an event the job asked for (progress at most once per ARGV[11] seconds).
if ARGV[10] ~= '' then
  local hook = redis.call('HMGET', KEYS[1], 'webhook_url', 'webhook_events', 'webhook_progress_at')
  local wanted = hook[1] and hook[2] and string.find(',' .. hook[2] .. ',', ',' .. ARGV[10] .. ',', 1, true)
  local now = tonumber(ARGV[6])
  if wanted and ARGV[10] == 'progress' then
    wanted = not hook[3] or tonumber(hook[3]) + tonumber(ARGV[11]) <= now
    if wanted then redis.call('HSET', KEYS[1], 'webhook_progress_at', ARGV[6]) end
  end
  if wanted then redis.call('XADD', KEYS[7], '*', 'job_id', ARGV[9], 'event', ARGV[10], 'at', ARGV[6]) end
end
redis.call('PUBLISH', KEYS[2], ARGV[1])
return {'ok', redis.call('HGETALL', KEYS[1])}
