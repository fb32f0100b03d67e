-- POST chat turns to the URL's path (/v1/chat or /v1/chat/stream) on sessions drawn at random
-- from a pool (default 10,000), with `Authorization: Bearer <key>` when a key is given.
-- Usage: wrk ... -s chat.lua URL -- [pool size] [API key]
-- Bodies are built once per thread, so the Lua side costs one table lookup per request.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")

local counter = 0
function setup(thread)
  thread:set("thread_id", counter)
  counter = counter + 1
end

local requests = {}
local pool = 10000

function init(args)
  pool = tonumber(args[1]) or pool
  math.randomseed(os.time() + 7919 * (thread_id or 0))
  local headers = { ["Content-Type"] = "application/json" }
  if args[2] then
    headers["Authorization"] = "Bearer " .. args[2]
  end
  for i = 1, pool do
    local body = string.format('{"session_id":"bench-%05d","message":"hello moorage %d"}', i - 1, i)
    requests[i] = wrk.format("POST", nil, headers, body)  -- the path of the URL given to wrk
  end
end

function request()
  return requests[math.random(pool)]
end
