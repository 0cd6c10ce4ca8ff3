-- Compare-and-extend: while KEYS[1] holds the token ARGV[1], makes its TTL at
-- least ARGV[2] ms (1); otherwise nothing (0). It never shortens a TTL: the
-- holder's current lock stays valid until extend returns, so the keys must
-- not expire earlier meanwhile.
if redis.call("GET", KEYS[1]) == ARGV[1] then
    if redis.call("PTTL", KEYS[1]) < tonumber(ARGV[2]) then
        redis.call("PEXPIRE", KEYS[1], ARGV[2])
    end
    return 1
end
return 0
