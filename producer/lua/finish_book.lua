-- Record a book's final state and its fields (result or error, finished_at) in one step, once: a reader never
-- sees the state without them. Returns 0 when the book already had a final state.
-- KEYS: 1 the book's hash
-- ARGV: 1 state, then field, value pairs
if redis.call('HSETNX', KEYS[1], 'state', ARGV[1]) == 0 then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
