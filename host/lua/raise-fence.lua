-- Commits a fence (docs/FENCING.md): raises the fence counter KEYS[1] to at
-- least ARGV[1] and returns its value after. It never lowers a counter, so
-- running it twice, or late, is harmless. An error when the counter is not a
-- number.
local counter = 0
local stored = redis.call("GET", KEYS[1])
if stored then
    counter = tonumber(stored)
    if counter == nil then
        return redis.error_reply("ERR fence counter " .. KEYS[1] .. " is not a number")
    end
end
local fence = tonumber(ARGV[1])
if fence > counter then
    redis.call("SET", KEYS[1], ARGV[1])
    counter = fence
end
return counter
