"""The Lua scripts of the Redis store: each one atomic step on the server (EVAL through
txredisapi, which caches their SHAs). KEYS are the keys touched; the channel and values
come in ARGV; what each answers is said above it, and the store (registry/redis.py)
reads the answers.
"""

from __future__ import annotations

from studios_gateway.registry.base import MAX_NODE_RECORD, Refresh

# KEYS: one counter per scope; ARGV[1]: TTL in ms, ARGV[i + 1]: bytes for KEYS[i].
ADD_TRANSFER = """
for i, key in ipairs(KEYS) do
  redis.call('INCRBY', key, ARGV[i + 1])
  redis.call('PEXPIRE', key, ARGV[1])
end
return 1
"""

# A session record written, and announced, if it exists; 1 when written, else 0.
UPDATE = """
if redis.call('SET', KEYS[1], ARGV[1], 'XX') then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
"""

# A new session, and its last-connected record saying "not connected since it was made"
# (KEYS[2], ARGV[4] for ARGV[5] ms): 1 when made, 0 when the id is taken.
CREATE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
"""

# KEYS: the record, the tunnel holder, the last-connected record.
DELETE = """
local n = redis.call('DEL', KEYS[1])
local t = redis.call('DEL', KEYS[2])
redis.call('DEL', KEYS[3])
if n + t > 0 then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return n
"""

# KEYS: the record, the tunnel holder, the last-connected record (ARGV[5], connected
# now, kept ARGV[6] ms).
CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local prev = redis.call('GET', KEYS[2])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[3], ARGV[5], 'PX', ARGV[6])
redis.call('PUBLISH', ARGV[3], ARGV[4])
if prev then return {1, prev} end
return {1}
"""

# Is the stored holder ours? Same tunnel id on the same node.
_OURS = """
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local ok, h = pcall(cjson.decode, cur)
if not ok or type(h) ~= 'table' or h['tunnel_id'] ~= ARGV[1] or h['node_id'] ~= ARGV[2] then
  return 0
end
"""

# Refresh, of one claim or a refresh round's many in one script: a claim that has
# expired (a store outage longer than its TTL) is made again, so long as the session
# exists; a claim held by another tunnel or node is left alone (_OURS's test, inline:
# _OURS returns from the script). KEYS holds each claim's tunnel key and session key in
# turn; ARGV the TTL in ms, the channel, then each claim's tunnel id, node id, holder
# JSON and session id. One answer per claim: 0 (another tunnel or node holds it),
# 1 (extended), 2 (claimed again), 3 (not ours, and the session is gone).
REFRESH = """
local out = {}
for i = 1, #KEYS / 2 do
  local tk, sk, a = KEYS[2 * i - 1], KEYS[2 * i], 4 * i - 1
  local cur = redis.call('GET', tk)
  if not cur then
    if redis.call('EXISTS', sk) == 0 then
      out[i] = 3
    else
      redis.call('SET', tk, ARGV[a + 2], 'PX', ARGV[1])
      redis.call('PUBLISH', ARGV[2], ARGV[a + 3])
      out[i] = 2
    end
  else
    local ok, h = pcall(cjson.decode, cur)
    if not ok or type(h) ~= 'table' or h['tunnel_id'] ~= ARGV[a]
        or h['node_id'] ~= ARGV[a + 1] then
      out[i] = redis.call('EXISTS', sk) == 0 and 3 or 0
    else
      redis.call('PEXPIRE', tk, ARGV[1])
      out[i] = 1
    end
  end
end
return out
"""

#: REFRESH's answers.
REFRESHED = {0: Refresh.HELD_ELSEWHERE, 1: Refresh.OURS, 2: Refresh.OURS, 3: Refresh.GONE}

# KEYS: the tunnel holder, the record, the last-connected record (ARGV[5]: connected
# until now, kept ARGV[6] ms; written only while the session exists).
RELEASE = _OURS + """
redis.call('DEL', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SET', KEYS[3], ARGV[5], 'PX', ARGV[6])
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

# Users' SSH keys: a JSON list of "<type> <base64> [comment]" lines; a key is its base64.

SET_KEYS = """
if ARGV[1] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""

_HAVE_KEYS = """
local have = {}
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, v = pcall(cjson.decode, cur)
  if ok and type(v) == 'table' then have = v end
end
local function blob(line) return string.match(line, '^%S+ (%S+)') or line end
"""

ADD_KEYS = _HAVE_KEYS + """
local seen, n0 = {}, #have
for _, line in ipairs(have) do seen[blob(line)] = true end
for _, line in ipairs(cjson.decode(ARGV[4])) do
  if not seen[blob(line)] then
    seen[blob(line)] = true
    table.insert(have, line)
  end
end
if #have > tonumber(ARGV[1]) then return {0, n0} end
if #have > n0 then
  redis.call('SET', KEYS[1], cjson.encode(have))
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
if #have == 0 then return {1, '[]'} end
return {1, cjson.encode(have)}
"""

REMOVE_KEYS = _HAVE_KEYS + """
if not cur then return 0 end
local keep = {}
if ARGV[3] ~= '' then
  local drop = {}
  for _, b in ipairs(cjson.decode(ARGV[3])) do drop[b] = true end
  for _, line in ipairs(have) do
    if not drop[blob(line)] then table.insert(keep, line) end
  end
end
local gone = #have - #keep
if #keep == 0 then redis.call('DEL', KEYS[1]) elseif gone > 0 then
  redis.call('SET', KEYS[1], cjson.encode(keep))
end
if gone > 0 then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return gone
"""

# Login state: a logout is recorded and announced in one step.

LOG_OUT = """
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""

# Take a pending login: its value, gone for every later caller.
TAKE = """
local v = redis.call('GET', KEYS[1])
if v then redis.call('DEL', KEYS[1]) end
return v
"""

# A node's settings record, and the index of the nodes that have one (JSON list of ids):
# nodes are found by one GET, never by a SCAN of every session. ARGV[5] and ARGV[6]: the
# channel and the event to publish on it once written (none when the event is '').
# KEYS[3..] are records the caller found gone (ARGV[7..] their ids): dropped from the
# index if still gone. The reply: the number of ids in the index, and the record this
# one replaced (false when there was none, or a longer one than MAX_NODE_RECORD).
ANNOUNCE_NODE = """
local prev = redis.call('GET', KEYS[1])
if prev and #prev > """ + str(MAX_NODE_RECORD) + """ then prev = false end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local raw = redis.call('GET', KEYS[2]) or '[]'
local ok, ids = false, nil
if #raw <= tonumber(ARGV[4]) * 100 then ok, ids = pcall(cjson.decode, raw) end
if not ok or type(ids) ~= 'table' then ids = {} end
local gone = {}
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then gone[ARGV[i + 4]] = true end
end
local out, seen = {ARGV[3]}, {[ARGV[3]] = true}
for _, id in ipairs(ids) do
  if #out >= tonumber(ARGV[4]) then break end
  if type(id) == 'string' and not seen[id] and not gone[id] then
    seen[id] = true
    out[#out + 1] = id
  end
end
redis.call('SET', KEYS[2], cjson.encode(out), 'PX', ARGV[2])
if ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
return {#out, prev}
"""

# GETs that never send a value longer than ARGV[1] bytes: 0 in its place (false for a
# key that does not exist). For keys anyone with write access to Redis could fill (the
# nodes' records and their index): the node must not read, or parse, megabytes.
BOUNDED_GETS = """
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v and #v > tonumber(ARGV[1]) then v = 0 end
  out[i] = v
end
return out
"""

# A node that stops: its settings record goes, and every node hears it (compares again).
WITHDRAW_NODE = """
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"""

PTTLS = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('PTTL', key) end
return out
"""
