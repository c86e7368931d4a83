-- Claim the webhook messages whose next attempt is due: read and removed in one step, so two relays never both
-- send one.
-- KEYS: 1 the retries (zset: webhook id -> due time)
-- ARGV: 1 now, 2 the most to claim
-- Returns the claimed webhook ids.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
