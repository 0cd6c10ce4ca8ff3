-- Compare-and-extend: sets a new TTL of ARGV[2] ms on KEYS[1] only while it
-- holds the token ARGV[1].
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0
