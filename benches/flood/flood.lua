-- wrk script: a flood of new users, each seen once. FLOOD_TARGET=server posts consumes to a
-- lightrate-server (key bench-key, application bench); FLOOD_TARGET=app requests GET /hello
-- with a new x-user-id. FLOOD_PREFIX names the flood (its users are PREFIX-<thread>-<n>), so
-- that a second flood brings users the first did not; FLOOD_USERS stops each of the threads
-- after its share. Used as described in BENCHMARKS.md ("Floods of new users").
local target = os.getenv("FLOOD_TARGET") or "server"
local prefix = os.getenv("FLOOD_PREFIX") or "a"
local total = tonumber(os.getenv("FLOOD_USERS") or "500000")
local threads = 0
local counter = 0

setup = function(thread)
  threads = threads + 1
  thread:set("id", threads)
end

init = function(args)
  local n = tonumber(os.getenv("FLOOD_THREADS") or "2")
  share = math.floor(total / n)
  sent = 0
  if target == "server" then
    wrk.method = "POST"
    wrk.path = "/api/v1/tokens/consume"
    wrk.headers["Content-Type"] = "application/json"
    wrk.headers["Authorization"] = "Bearer bench-key"
  else
    wrk.method = "GET"
    wrk.path = "/hello"
  end
end

request = function()
  sent = sent + 1
  local user = string.format("%s-%d-%d", prefix, id, sent)
  if target == "server" then
    local body = string.format(
      '{"applicationId":"bench","userIdentifier":"%s","tokensRequested":1,"operation":"send_email"}',
      user)
    return wrk.format(nil, nil, nil, body)
  end
  return wrk.format(nil, nil, { ["x-user-id"] = user }, nil)
end

response = function(status, headers, body)
  if sent >= share then
    wrk.thread:stop()
  end
end

done = function(summary, latency, requests)
  io.write(string.format("requests: %d, non-2xx: %d, socket errors: %d\n", summary.requests,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout))
end
