-- Compare-and-set: takes KEYS[1] for the token ARGV[1] with a TTL of ARGV[2]
-- ms when the key is free, or when it already holds this token (a retry of
-- the same acquire that finds its own earlier SET: the TTL starts again).
-- 1 then; 0 when anything else holds the key (another token, or a value of
-- another type, which GET answers with WRONGTYPE).
local held = redis.pcall("GET", KEYS[1])
if held == false then
    redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
    return 1
end
if held == ARGV[1] then
    redis.call("PEXPIRE", KEYS[1], ARGV[2])
    return 1
end
return 0
