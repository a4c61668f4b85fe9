-- wrk script of benchmarks/interests_serving.py: GET one of the request paths of
-- $PINRANK_PATHS_FILE (one per line, e.g. /v1/interests?k=10&country=US&gender=F&age=31) at
-- random; prints one JSON line of totals, errors and latency percentiles at the end.
local paths = {}
for line in io.lines(os.getenv("PINRANK_PATHS_FILE")) do paths[#paths + 1] = line end
math.randomseed(os.time() + #paths)

request = function()
  return wrk.format("GET", paths[math.random(1, #paths)])
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
