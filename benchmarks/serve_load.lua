-- wrk script of benchmarks/serve_load.py: GET /v1/feed/{user_id}?k=K for random users, a share
-- of them unknown ids (cold users: fallback feeds), reading the known ids from $PINRANK_IDS_FILE
-- (one per line); or, with $PINRANK_PATHS_FILE (benchmarks/interests_serving.py), GET one of its
-- request paths (one per line) at random. Prints one JSON line of totals, errors and latency
-- percentiles at the end.
local paths_file = os.getenv("PINRANK_PATHS_FILE")
local lines = {}
for line in io.lines(paths_file or os.getenv("PINRANK_IDS_FILE")) do lines[#lines + 1] = line end
local k = os.getenv("PINRANK_K") or "50"
local unknown_share = tonumber(os.getenv("PINRANK_UNKNOWN_SHARE") or "0.02")
math.randomseed(os.time() + #lines)

request = function()
  if paths_file then
    return wrk.format("GET", lines[math.random(1, #lines)])
  end
  local uid
  if math.random() < unknown_share then
    uid = tostring(1000000000000 + math.random(1, 1000000))
  else
    uid = lines[math.random(1, #lines)]
  end
  return wrk.format("GET", "/v1/feed/" .. uid .. "?k=" .. k)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"mean": %.1f, "p50": %d, "p90": %d, "p99": %d, "max": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max))
end
