-- Take one token from a tenant's request bucket: a token bucket shared by every API process, timed by Redis's own
-- clock (so the processes' clocks need not agree). A full bucket holds `burst` tokens; `rate` come back a second.
-- KEYS: 1 the tenant's bucket (hash: tokens, at)
-- ARGV: 1 rate (tokens a second, > 0), 2 burst (the bucket's size, >= 1)
-- Returns {1, ''} when a token was taken, {0, seconds until one is available (a string)} when refused.
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(saved[1]) or burst
local at = tonumber(saved[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local taken, wait = 0, ''
if tokens >= 1 then
  tokens = tokens - 1
  taken = 1
else
  wait = string.format('%.6f', (1 - tokens) / rate)
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'at', string.format('%.6f', now))
-- a bucket left alone refills completely in burst / rate seconds; after that it is the same as no key at all
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {taken, wait}
