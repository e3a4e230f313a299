-- bench/events.lua - wrk's requests for bench/events: POSTs of application/json
-- bodies read from a file, one body a line.
--
--   wrk ... -s bench/events.lua http://HOST:PORT/v1/events -- BODIES
--
-- bench/events writes BODIES (64 single events for /v1/events, one array of
-- 1000 for /v1/events/batch) and sends each once itself before wrk runs, to
-- know that every one is answered 202 with every event accepted: wrk only
-- counts statuses, it does not read answers.
--
-- Every request is formatted once, in init; request() then only hands the
-- same strings over in turn, so the script costs wrk about what a static
-- request does and the figure is esteira's.

local requests = {}
local next_req = 1

function init(args)
  local path = args[1] or error("bench/events.lua: the bodies' file is the first argument")
  local headers = { ["Content-Type"] = "application/json" }
  for line in io.lines(path) do
    if #line > 0 then
      requests[#requests + 1] = wrk.format("POST", nil, headers, line)
    end
  end
  if #requests == 0 then
    error("bench/events.lua: no body in " .. path)
  end
end

function request()
  local r = requests[next_req]
  next_req = next_req % #requests + 1
  return r
end
