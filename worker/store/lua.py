"""The store's Lua scripts: each decision about one operation record is one atomic script.

Times come from Redis's own clock (`TIME`), so every worker judges a lease by the same clock,
and are stored as integer epoch milliseconds, as every version of the service has stored
them: during a rolling upgrade old and new workers share these records and must read them
alike. What leaves the store (records, claims) is in epoch seconds (`records.seconds`).
"""

from __future__ import annotations

# `now`: Redis's clock, in epoch milliseconds.
NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Go on only if the caller's fencing token (ARGV[1]) still holds the running claim; else 0.
_HELD = """
local key = KEYS[1]
if redis.call('HGET', key, 'token') ~= ARGV[1] or redis.call('HGET', key, 'state') ~= 'running' then
  return 0
end
"""

# KEYS: record. ARGV: owner, lease ms, ttl s, action, event id, source.
# Returns {verdict, previous state, token, attempts, since ms}; verdict is claimed | done
# (succeeded) | busy (live claim elsewhere) | failed (this source already failed). `since`
# starts the age budget: the replay's time if replayed, else the creation's.
CLAIM = (
    NOW
    + """
local key = KEYS[1]
local state = redis.call('HGET', key, 'state') or 'new'
local function answer(verdict)
  local since = redis.call('HGET', key, 'replayed_at') or redis.call('HGET', key, 'created_at')
  return {verdict, state, redis.call('HGET', key, 'token') or '0',
          redis.call('HGET', key, 'attempts') or '0', since or '0'}
end
if state == 'succeeded' then return answer('done') end
if state == 'failed' and redis.call('HGET', key, 'last_source') == ARGV[6] then
  return answer('failed')
end
if state == 'running' then
  local lease = tonumber(redis.call('HGET', key, 'lease_until') or '0')
  if lease > now and redis.call('HGET', key, 'owner') ~= ARGV[1] then return answer('busy') end
end
redis.call('HINCRBY', key, 'token', 1)
redis.call('HINCRBY', key, 'attempts', 1)
redis.call('HSETNX', key, 'created_at', now)
redis.call('HSET', key, 'state', 'running', 'owner', ARGV[1],
           'lease_until', now + tonumber(ARGV[2]), 'updated_at', now,
           'action', ARGV[4], 'crm_event_id', ARGV[5], 'previous_state', state,
           'last_source', ARGV[6])
redis.call('EXPIRE', key, tonumber(ARGV[3]))
return answer('claimed')
"""
)

# KEYS: record. ARGV: token, lease ms. Extends the lease if the token is still current.
RENEW = (
    NOW
    + _HELD
    + """
redis.call('HSET', key, 'lease_until', now + tonumber(ARGV[2]))
return 1
"""
)

# KEYS: record. ARGV: token. Undo a claim whose call was never sent (deferred by the shared
# limits): back to the state before it, and the attempt not counted.
RELEASE = (
    _HELD
    + """
local previous = redis.call('HGET', key, 'previous_state') or 'queued'
if previous == 'new' then previous = 'queued' end
redis.call('HSET', key, 'state', previous)
redis.call('HINCRBY', key, 'attempts', -1)
redis.call('HDEL', key, 'lease_until')
return 1
"""
)

# KEYS: record. ARGV: token, new state, ttl s, last error, result JSON ('' = keep).
# Returns 1 when recorded, 0 when the caller no longer owns the claim.
SETTLE = (
    NOW
    + _HELD
    + """
redis.call('HSET', key, 'state', ARGV[2], 'updated_at', now, 'last_error', ARGV[4])
redis.call('HDEL', key, 'lease_until')
if ARGV[5] ~= '' then redis.call('HSET', key, 'result', ARGV[5]) end
if ARGV[2] == 'succeeded' then redis.call('HSET', key, 'succeeded_at', now) end
redis.call('EXPIRE', key, tonumber(ARGV[3]))
return 1
"""
)

# KEYS: record. ARGV: force ('1' | '0'), actor, state for a reopened dead letter. An operator's
# replay: a failed operation (or, forced, a succeeded one, which goes back to queued) is
# reopened with a fresh attempt budget; anything else is left as it is.
# Returns {previous state ('missing' when there is no record), attempts}.
REOPEN = (
    NOW
    + """
local key = KEYS[1]
local state = redis.call('HGET', key, 'state')
if not state then return {'missing', '0'} end
local attempts = redis.call('HGET', key, 'attempts') or '0'
if state == 'failed' or (state == 'succeeded' and ARGV[1] == '1') then
  local after = ARGV[3]
  if state == 'succeeded' then
    after = 'queued'
    redis.call('HSET', key, 'forced', ARGV[2])
  end
  redis.call('HSET', key, 'state', after, 'attempts', 0, 'updated_at', now,
             'replayed_at', now, 'replayed_by', ARGV[2])
end
return {state, attempts}
"""
)

# KEYS: schedule. ARGV: now s, lease s, limit. Due entries are pushed `lease` into the
# future (so a dispatcher that dies re-dispatches them later) and returned.
TAKE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), member)
end
return due
"""
