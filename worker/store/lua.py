"""The store's Lua scripts: each decision about one operation record is one atomic script.

Times come from Redis's own clock (`TIME`), so every worker judges a lease by the same clock,
and are stored as integer epoch milliseconds, as every version of the service has stored
them: during a rolling upgrade old and new workers share these records and must read them
alike. What leaves the store (records, claims) is in epoch seconds (`records.seconds`).

Every script's last argument is a clock offset in milliseconds, added to Redis's clock: 0 in
service, moved forward by the state-machine tests to let leases and settle times run out
without waiting for them.

The record's fields (CLAIMS.md): `state`, `owner` (one execution, never a task ID), `token`
(fencing counter), `lease_until`, `attempts`, `since` (start of the age budget),
`last_source`, `call_started_at` (an irreversible call may be on the wire since then),
`doubt_since` (when the last abandoned call began), `prior_*` (what a claim changed, for
`release` to put back), `schema` (the record layout's version).
"""

from __future__ import annotations

# The layout these scripts write. Version 1 (no `schema` field) kept no send marker, so a
# version-1 record whose holder is gone is treated as in doubt (see CLAIM).
SCHEMA = "2"

# `now`: Redis's clock, in epoch milliseconds (the shared limits' scripts use it too).
NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# The start of every script on one operation record: `now` moved by the caller's offset
# (the last argument), the record's key, and a reader of its fields.
_RECORD = (
    NOW
    + """
now = now + tonumber(ARGV[#ARGV])
local key = KEYS[1]
local function get(field) return redis.call('HGET', key, field) end
local _PRIOR = {'prior_state', 'prior_attempts', 'prior_source', 'prior_doubt'}
"""
)

# Go on only if the caller (ARGV[1] owner, ARGV[2] token) still holds the running claim.
_HELD = """
if get('state') ~= 'running' or get('owner') ~= ARGV[1] or get('token') ~= ARGV[2] then
  return 0
end
"""

# KEYS: record. ARGV: owner, lease ms, ttl s, action, event id, source, redelivered (1|0),
# irreversible (1|0), offset.
# Returns {verdict, state before (a dead holder accounted for), token, attempts, since ms,
# doubt_since ms ('' when none), lease_until ms, now ms}. Verdicts: claimed | done
# (succeeded) | busy (a live claim, whoever holds it) | failed (a dead letter: only a new
# notification or an operator reopens it).
CLAIM = (
    _RECORD
    + """
local owner, lease, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local state = get('state') or 'new'
local doubt = get('doubt_since')
local function answer(verdict)
  return {verdict, state, get('token') or '0', get('attempts') or '0',
          get('since') or get('replayed_at') or get('created_at') or tostring(now),
          doubt or '', get('lease_until') or '0', tostring(now)}
end
if state == 'succeeded' then return answer('done') end
if state == 'failed' then return answer('failed') end
if state == 'running' then
  if tonumber(get('lease_until') or '0') > now then return answer('busy') end
  -- The holder is gone. Died while calling: in doubt since its call began. Died while
  -- reconciling: as doubtful as before. Died with no marker, when it may have sent all
  -- the same (a version-1 holder kept none; a message the broker delivered again may come
  -- from a holder whose marker a Redis crash lost): in doubt since its lease ended at the
  -- latest, since it could send only while its lease lasted.
  doubt = get('call_started_at') or doubt
  if not doubt and ARGV[8] == '1' and (ARGV[7] == '1' or not get('schema')) then
    doubt = get('lease_until') or tostring(now)
  end
  state = doubt and 'in_doubt' or 'queued'
elseif state == 'in_doubt' and not doubt and not get('schema') then
  doubt = get('updated_at') or tostring(now)  -- version 1 settled it after the call began
end
if state == 'new' then
  redis.call('HSET', key, 'created_at', now, 'since', now)
elseif not get('since') then
  redis.call('HSET', key, 'since', get('replayed_at') or get('created_at') or now)
end
redis.call('HSET', key, 'prior_state', state, 'prior_attempts', get('attempts') or '0',
           'prior_source', get('last_source') or '', 'prior_doubt', doubt or '')
redis.call('HINCRBY', key, 'token', 1)
redis.call('HINCRBY', key, 'attempts', 1)
redis.call('HSET', key, 'state', 'running', 'owner', owner, 'lease_until', now + lease,
           'claimed_at', now, 'updated_at', now, 'action', ARGV[4], 'crm_event_id', ARGV[5],
           'last_source', ARGV[6], 'schema', '"""
    + SCHEMA
    + """')
if doubt then
  redis.call('HSET', key, 'doubt_since', doubt)
else
  redis.call('HDEL', key, 'doubt_since')
end
redis.call('HDEL', key, 'call_started_at')
redis.call('EXPIRE', key, ttl)
local claimed = answer('claimed')
claimed[2] = state
return claimed
"""
)

# KEYS: record. ARGV: owner, token, lease ms, offset. The heartbeat: extends the lease while
# the caller holds the claim. Returns the new lease end (ms), or 0 when the claim is lost.
RENEW = (
    _RECORD
    + _HELD
    + """
redis.call('HSET', key, 'lease_until', now + tonumber(ARGV[3]))
return now + tonumber(ARGV[3])
"""
)

# KEYS: record. ARGV: owner, token, lease ms, offset. Right before an irreversible call: the
# lease renewed and the send marker set in one step. Returns the lease end (ms), or 0 when
# the claim is lost (then nothing may be sent).
MARK_SENDING = (
    _RECORD
    + _HELD
    + """
redis.call('HSET', key, 'lease_until', now + tonumber(ARGV[3]), 'call_started_at', now,
           'updated_at', now)
return now + tonumber(ARGV[3])
"""
)

# KEYS: record. ARGV: owner, token, offset. Undo a claim whose call was never sent (held back
# by the shared limits, waiting to settle, a lease run out before the call): the record goes
# back to exactly what it was, the attempt not counted.
RELEASE = (
    _RECORD
    + _HELD
    + """
local previous = get('prior_state') or 'queued'
if previous == 'new' then previous = 'queued' end
redis.call('HSET', key, 'state', previous, 'attempts', get('prior_attempts') or '0')
if (get('prior_source') or '') ~= '' then
  redis.call('HSET', key, 'last_source', get('prior_source'))
else
  redis.call('HDEL', key, 'last_source')
end
if (get('prior_doubt') or '') ~= '' then
  redis.call('HSET', key, 'doubt_since', get('prior_doubt'))
else
  redis.call('HDEL', key, 'doubt_since')
end
redis.call('HDEL', key, 'lease_until', 'call_started_at', 'owner', unpack(_PRIOR))
return 1
"""
)

# KEYS: record. ARGV: owner, token, new state, ttl s, last error, result JSON ('' = keep),
# doubt ('call': the call just abandoned began the doubt | 'keep': as doubtful as before |
# 'none'), offset. Returns 1 when recorded, 2 when a dead letter was reopened at once for a
# notification that arrived during the run (fresh budget), 0 when the caller no longer
# holds the claim.
SETTLE = (
    _RECORD
    + _HELD
    + """
local doubt = ARGV[7]
if doubt == 'call' then
  local began = get('call_started_at') or get('doubt_since') or tostring(now)
  redis.call('HSET', key, 'doubt_since', began)
elseif doubt == 'none' then
  redis.call('HDEL', key, 'doubt_since')
end
local state, recorded = ARGV[3], 1
if state == 'failed' and get('asked_again_at') then
  state, recorded = get('doubt_since') and 'in_doubt' or 'queued', 2
  redis.call('HSET', key, 'attempts', 0, 'since', now, 'reopened_at', now)
end
if state == 'succeeded' or recorded == 2 then redis.call('HDEL', key, 'asked_again_at') end
redis.call('HSET', key, 'state', state, 'updated_at', now, 'last_error', ARGV[5])
redis.call('HDEL', key, 'lease_until', 'call_started_at', unpack(_PRIOR))
if ARGV[6] ~= '' then redis.call('HSET', key, 'result', ARGV[6]) end
if state == 'succeeded' then redis.call('HSET', key, 'succeeded_at', now) end
redis.call('EXPIRE', key, tonumber(ARGV[4]))
return recorded
"""
)

# Whether a dead letter is in doubt: its last attempt may have taken effect unseen. A
# version-1 record kept no doubt marker: an irreversible one counts as in doubt.
_DEAD_IN_DOUBT = """
local function dead_in_doubt(irreversible)
  if get('doubt_since') then return true end
  if irreversible == '1' and not get('schema') then
    redis.call('HSET', key, 'doubt_since', get('updated_at') or now)
    return true
  end
  return false
end
"""

# KEYS: record, its sources. ARGV: action, event id, source, ttl s, irreversible (1|0),
# offset. A notification (or API request) asks for the operation: a new record is queued; a
# dead letter asked for by a source it has not seen is reopened with a fresh budget (in
# doubt when its last attempt was); anything else is left as it is (a redelivery).
# Returns 'created' | 'reopened' | 'unchanged'.
ENQUEUE = (
    _RECORD
    + _DEAD_IN_DOUBT
    + """
local ttl = tonumber(ARGV[4])
local state = get('state')
local verdict = 'unchanged'
if not state then
  redis.call('HSET', key, 'state', 'queued', 'created_at', now, 'since', now,
             'source_id', ARGV[3], 'schema', '"""
    + SCHEMA
    + """')
  verdict = 'created'
elseif redis.call('SISMEMBER', KEYS[2], ARGV[3]) == 0 and state ~= 'succeeded' then
  if state == 'failed' then
    local after = dead_in_doubt(ARGV[5]) and 'in_doubt' or 'queued'
    redis.call('HSET', key, 'state', after, 'attempts', 0, 'since', now, 'updated_at', now,
               'reopened_at', now)
    verdict = 'reopened'
  else
    -- Asked again while still being worked on: should this run end a dead letter, the
    -- newer notification still gets its fresh budget (SETTLE reopens it).
    redis.call('HSET', key, 'asked_again_at', now)
  end
end
redis.call('HSET', key, 'action', ARGV[1], 'crm_event_id', ARGV[2])
redis.call('EXPIRE', key, ttl)
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[2], ttl)
return verdict
"""
)

# KEYS: record. ARGV: force (1|0), actor, irreversible (1|0), offset. An operator's replay:
# a failed operation is reopened with a fresh budget (in doubt when its last attempt was);
# a succeeded one, forced, goes back to queued as if never done; anything else is left.
# Returns {previous state ('missing' when there is no record), attempts}.
REOPEN = (
    _RECORD
    + _DEAD_IN_DOUBT
    + """
local state = get('state')
if not state then return {'missing', '0'} end
local attempts = get('attempts') or '0'
if state == 'failed' or (state == 'succeeded' and ARGV[1] == '1') then
  local after = dead_in_doubt(ARGV[3]) and 'in_doubt' or 'queued'
  if state == 'succeeded' then
    after = 'queued'
    redis.call('HSET', key, 'forced', ARGV[2])
    redis.call('HDEL', key, 'doubt_since')
  end
  redis.call('HSET', key, 'state', after, 'attempts', 0, 'updated_at', now, 'since', now,
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

# KEYS: record. ARGV: actor, why it was held, offset. An operator drops an operation the
# safety valves held: unless it succeeded, failed already or a live claim holds it, it
# becomes a dead letter (replayable) that says who dropped it. A doubt it carried stays;
# one whose holder died mid-run (a running record whose lease ran out) is in doubt from its
# send marker, or from its lease's end when it left none (the marker may be what a Redis
# crash lost), so that a replay asks crm-get before anything is sent again.
# Returns the state before ('missing' when there is no record); dropped when that state
# is queued, retrying, in_doubt, or running under a lease that ran out.
DROP = (
    _RECORD
    + """
local state = get('state')
if not state then return 'missing' end
if state == 'succeeded' or state == 'failed' then return state end
if state == 'running' then
  local lease_until = tonumber(get('lease_until') or '0')
  if lease_until > now then return 'busy' end
  if not get('doubt_since') then
    redis.call('HSET', key, 'doubt_since', get('call_started_at') or lease_until)
  end
end
redis.call('HSET', key, 'state', 'failed', 'updated_at', now,
           'last_error', 'dropped by ' .. ARGV[1] .. ' (held: ' .. ARGV[2] .. ')')
redis.call('HDEL', key, 'lease_until', 'call_started_at', 'owner', unpack(_PRIOR))
return state
"""
)
