-- Compare-and-set with a fence counter (docs/FENCING.md). KEYS[1] is the lock
-- key, KEYS[2] its fence counter (`<lock key>:fence`); ARGV[1] the token,
-- ARGV[2] the TTL in ms. It takes the key as set-if-absent.lua does (free, or
-- already this token: the TTL starts again), and then also raises the counter
-- to max(counter + 1, floor) and returns the new value. floor is this node's
-- clock rounded down to the whole second, in microseconds: a counter lost in
-- a restart comes back above every fence issued more than a second (plus the
-- nodes' clock offset) before. 0, and nothing changed, when anything else
-- holds the key. An error, and nothing changed, when the counter is not a
-- number or would pass 2^53 - 1 (Lua numbers are exact below it).
local counter = 0
local stored = redis.call("GET", KEYS[2])
if stored then
    counter = tonumber(stored)
    if counter == nil then
        return redis.error_reply("ERR fence counter " .. KEYS[2] .. " is not a number")
    end
end
local floor = tonumber(redis.call("TIME")[1]) * 1000000
local fence = math.max(counter + 1, floor)
if fence > 9007199254740991 then
    return redis.error_reply("ERR fence counter " .. KEYS[2] .. " would pass 2^53 - 1")
end
local held = redis.pcall("GET", KEYS[1])
if held == false then
    redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
elseif held == ARGV[1] then
    redis.call("PEXPIRE", KEYS[1], ARGV[2])
else
    return 0
end
redis.call("SET", KEYS[2], string.format("%.0f", fence))
return fence
