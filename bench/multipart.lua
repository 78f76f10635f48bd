-- wrk script: each request POSTs one prepared multipart body, rotating through the files that
-- $BODIES/list.txt names and, when $PATHS is set (";"-separated), through those paths too;
-- done() prints one JSON line with counts and latency percentiles.
local bodies, paths, i = {}, {}, 0
for line in io.lines(os.getenv("BODIES") .. "/list.txt") do
  local f = io.open(line, "rb")
  table.insert(bodies, f:read("*a"))
  f:close()
end
for p in string.gmatch(os.getenv("PATHS") or "", "[^;]+") do
  table.insert(paths, p)
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. os.getenv("BOUNDARY")

request = function()
  i = i + 1
  local path = nil
  if #paths > 0 then path = paths[i % #paths + 1] end
  return wrk.format(nil, path, nil, bodies[i % #bodies + 1])
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_s": %.3f, "non2xx": %d, "socket_errors": %d, ' ..
    '"p50_ms": %.3f, "p95_ms": %.3f, "p99_ms": %.3f}\n',
    summary.requests, summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(95) / 1e3, latency:percentile(99) / 1e3))
end
