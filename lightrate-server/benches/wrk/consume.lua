-- wrk script: POST /api/v1/tokens/consume, one send_email token for a user drawn from 5000
-- (WRK_USERS=1: one hot user). Used by run.sh (see BENCHMARKS.md); every answer should be 200
-- (granted or not).
wrk.method = "POST"
wrk.path = "/api/v1/tokens/consume"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-key"

local users = tonumber(os.getenv("WRK_USERS") or "5000")

request = function()
  local body = string.format(
    '{"applicationId":"bench","userIdentifier":"user-%d","tokensRequested":1,"operation":"send_email"}',
    math.random(1, users))
  return wrk.format(nil, nil, nil, body)
end

-- wrk counts answers that are not 2xx/3xx as errors.status.
done = function(summary, latency, requests)
  io.write(string.format("non-200 answers: %d\n", summary.errors.status))
end
