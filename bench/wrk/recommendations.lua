-- GET /v1/users/<id>/recommendations?n=10 for every MovieLens-100K user, plus unknown users.
--
-- RECLOOP_KEY=rlk_... wrk -t1 -c32 -d60s --latency -s bench/wrk/recommendations.lua \
--     http://127.0.0.1:8000
--
-- The ids cycle in a fixed interleaved order: "1", "2", ..., with an unknown user "new-<k>"
-- after every 9th known one, so about 10 % of the requests are for users with no history
-- (943 known + 104 unknown ids). Each wrk thread starts at a different offset of the cycle.
-- The key comes from the environment (RECLOOP_KEY); RECLOOP_USERS overrides the number of
-- known users (default 943). done() prints "recloop name=value" lines: the count of each
-- status, of non-200 answers, of each model_version seen in the 200 bodies, and latency
-- percentiles (ms) including p95, which wrk's own --latency block does not show.

local key = os.getenv("RECLOOP_KEY")
if key == nil or key == "" then
  error("set RECLOOP_KEY to an API key (rlk_...)")
end
local n_known = tonumber(os.getenv("RECLOOP_USERS") or "943")

local ids = {}
local unknown = 0
for user = 1, n_known do
  ids[#ids + 1] = tostring(user)
  if user % 9 == 0 then
    unknown = unknown + 1
    ids[#ids + 1] = "new-" .. unknown
  end
end

-- main state: keep the threads so done() can collect their counters
local threads = {}

function setup(thread)
  thread:set("thread_index", #threads)
  threads[#threads + 1] = thread
end

-- thread state
local requests = {}
local position = 0
statuses = {}
versions = {}
non200 = 0

function init(args)
  local headers = { ["Authorization"] = "Bearer " .. key }
  for i, id in ipairs(ids) do
    requests[i] = wrk.format("GET", "/v1/users/" .. id .. "/recommendations?n=10", headers)
  end
  local index = thread_index or 0
  position = (index * 97) % #requests
end

function request()
  position = position % #requests + 1
  return requests[position]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status ~= 200 then
    non200 = non200 + 1
    return
  end
  local version = body and string.match(body, '"model_version":"([^"]*)"')
  if version then
    versions[version] = (versions[version] or 0) + 1
  end
end

function done(summary, latency, requests_)
  local all_statuses, all_versions, all_non200 = {}, {}, 0
  for _, thread in ipairs(threads) do
    for code, count in pairs(thread:get("statuses") or {}) do
      all_statuses[code] = (all_statuses[code] or 0) + count
    end
    for version, count in pairs(thread:get("versions") or {}) do
      all_versions[version] = (all_versions[version] or 0) + count
    end
    all_non200 = all_non200 + (thread:get("non200") or 0)
  end
  io.write(string.format("recloop ids=%d\n", #ids))
  io.write(string.format("recloop unknown_ids=%d\n", unknown))
  io.write(string.format("recloop non200=%d\n", all_non200))
  for code, count in pairs(all_statuses) do
    io.write(string.format("recloop status_%d=%d\n", code, count))
  end
  for version, count in pairs(all_versions) do
    io.write(string.format("recloop version_%s=%d\n", version, count))
  end
  for _, p in ipairs({ 50, 75, 90, 95, 99, 99.9 }) do
    local name = string.gsub(tostring(p), "%.", "_")
    io.write(string.format("recloop lua_p%s_ms=%.3f\n", name, latency:percentile(p) / 1000.0))
  end
  io.write(string.format("recloop lua_max_ms=%.3f\n", latency.max / 1000.0))
end
