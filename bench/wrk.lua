-- wrk script for bench/run.sh: one kind of request, and a JSON summary.
--
-- Configured by environment variables (wrk passes none of its own):
--   BENCH_METHOD   GET (default), PUT, POST, ...
--   BENCH_PATH     the request path
--   BENCH_TOKENS   a file of bearer tokens, one a line: requests rotate
--                  through them (each thread from its own offset); unset or
--                  empty: no Authorization header
--   BENCH_BODY     a file whose bytes are every request's body (sent with
--                  Content-Type: application/json)
--   BENCH_OUT      where done() writes the summary, as JSON
--
-- Requests are built once, in init(); request() only picks the next one, so
-- the load generator spends its time sending, not formatting.

local requests, n, i = {}, 0, 0
local next_thread = 0

-- Runs in wrk's main state; sets the global bench_thread in each thread's.
function setup(thread)
    thread:set("bench_thread", next_thread)
    next_thread = next_thread + 1
end

local function read_file(path)
    local f = assert(io.open(path, "rb"))
    local data = f:read("*a")
    f:close()
    return data
end

function init(args)
    local method = os.getenv("BENCH_METHOD") or "GET"
    local path = assert(os.getenv("BENCH_PATH"), "BENCH_PATH is not set")
    local body = nil
    local headers = {}
    local body_file = os.getenv("BENCH_BODY")
    if body_file and body_file ~= "" then
        body = read_file(body_file)
        headers["Content-Type"] = "application/json"
    end
    local tokens_file = os.getenv("BENCH_TOKENS")
    if tokens_file and tokens_file ~= "" then
        for token in io.lines(tokens_file) do
            if token ~= "" then
                headers["Authorization"] = "Bearer " .. token
                n = n + 1
                requests[n] = wrk.format(method, path, headers, body)
            end
        end
        assert(n > 0, "no token in " .. tokens_file)
    else
        n = 1
        requests[1] = wrk.format(method, path, headers, body)
    end
    -- Spread the threads over the rotation.
    i = ((bench_thread or 0) * 7919) % n
end

function request()
    i = i % n + 1
    return requests[i]
end

function done(summary, latency, _)
    local out = assert(os.getenv("BENCH_OUT"), "BENCH_OUT is not set")
    local e = summary.errors
    local f = assert(io.open(out, "w"))
    f:write(string.format(
        '{"requests":%d,"duration_us":%d,"bytes":%d,' ..
        '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
        '"latency_us":{"p50":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}}\n',
        summary.requests, summary.duration, summary.bytes,
        e.connect, e.read, e.write, e.status, e.timeout,
        latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
        latency.max, latency.mean))
    f:close()
end
