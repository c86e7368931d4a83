-- The `retry` transition: a failed or expired job is queued again under its id, its earlier end kept in 'history';
-- the record (and its idempotency key) stop expiring, and the job waits to be sent.
-- KEYS: 1 job hash, 2 events channel, 3 dead letters (zset), 4 unsent jobs (zset), 5 idempotency key ('' when none),
--       6 its tenant's queued jobs (set; '' for no tenant)
-- ARGV: 1 target state, 2 source states (comma separated), 3 an error code that forbids the retry, 4 now,
--       5 the new queue deadline ('' for none), 6 job id, 7 a re-render's edit (JSON; '' for a plain retry, which
--       keeps the edit of a re-render that failed)
-- Returns {'ok', the whole record flattened}, or {'missing' | 'refused', current state}.
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return {'missing', ''} end
local err = redis.call('HGET', KEYS[1], 'error')
local forbidden = err and string.find(err, '"code":"' .. ARGV[3] .. '"', 1, true)
if not string.find(',' .. ARGV[2] .. ',', ',' .. current .. ',', 1, true) or forbidden then
  return {'refused', current}
end
local history = cjson.decode(redis.call('HGET', KEYS[1], 'history') or '[]')
table.insert(history, {state = current, error = err and cjson.decode(err) or cjson.null,
  attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0'),
  finished_at = tonumber(redis.call('HGET', KEYS[1], 'finished_at') or '0')})
redis.call('HDEL', KEYS[1], 'error', 'finished_at', 'started_at', 'cancel_requested', 'expires_at')
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'attempts', '0', 'history', cjson.encode(history))
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'expires_at', ARGV[5]) end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'rerender', ARGV[7]) end
redis.call('PERSIST', KEYS[1])
if KEYS[5] ~= '' then redis.call('PERSIST', KEYS[5]) end
redis.call('ZREM', KEYS[3], ARGV[6])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[6])
if KEYS[6] ~= '' then redis.call('SADD', KEYS[6], ARGV[6]) end
redis.call('PUBLISH', KEYS[2], ARGV[1])
return {'ok', redis.call('HGETALL', KEYS[1])}
