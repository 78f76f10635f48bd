-- wrk script: each request POSTs one prepared body, rotating through the files that $BODIES/list.txt
-- names (a line may add, after a tab, the value of an Inference-Header-Content-Length header: the Open
-- Inference Protocol's binary tensors) and, when $PATHS is set (";"-separated), through those paths too;
-- the Content-Type is $CONTENT_TYPE, or multipart with $BOUNDARY. done() prints one JSON line with counts
-- and latency percentiles.
local bodies, headers, paths, i = {}, {}, {}, 0
for line in io.lines(os.getenv("BODIES") .. "/list.txt") do
  local name, header = string.match(line, "^([^\t]+)\t?(.*)$")
  local f = io.open(name, "rb")
  table.insert(bodies, f:read("*a"))
  table.insert(headers, header)
  f:close()
end
for p in string.gmatch(os.getenv("PATHS") or "", "[^;]+") do
  table.insert(paths, p)
end
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("CONTENT_TYPE") or ("multipart/form-data; boundary=" .. os.getenv("BOUNDARY"))

request = function()
  i = i + 1
  local path = nil
  if #paths > 0 then path = paths[i % #paths + 1] end
  local k = i % #bodies + 1
  local extra = nil
  if headers[k] ~= "" then extra = {["Inference-Header-Content-Length"] = headers[k]} end
  return wrk.format(nil, path, extra, bodies[k])
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_s": %.3f, "non2xx": %d, "socket_errors": %d, ' ..
    '"p50_ms": %.3f, "p95_ms": %.3f, "p99_ms": %.3f}\n',
    summary.requests, summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(95) / 1e3, latency:percentile(99) / 1e3))
end
