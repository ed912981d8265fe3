-- wrk script for bench/soak.sh: a mixed load on the gateway.
--
--   wrk -t2 -c16 -d600s -s bench/soak.lua http://127.0.0.1:PORT -- \
--       PLATFORM_TOKEN SUPPORT_TOKEN ORG_ID
--
-- Each thread sends, in a fixed rotation, one request of each kind:
--
--   get        GET  /api/organizations/ORG_ID, platform token       -> 200
--   put        PUT  /api/organizations/ORG_ID, platform token,
--              a valid ~300-byte update                             -> 200
--   denied     PUT, support token, the same valid body              -> 403
--   schema     PUT, platform token, a body the schema refuses       -> 422
--   malformed  PUT, platform token, a body that is not JSON         -> 400
--   unauth     GET, no token                                        -> 401
--
-- (get and put may also get 502: the soak upstream aborts every Nth
-- request.) Every request carries `x-request-id: soak-KIND-THREAD-N`, N
-- counting from 1 in each thread, so KIND is also kinds[(N - 1) % 6 + 1]:
-- bench/soak.sh rebuilds the whole set of ids sent from each thread's last
-- N, and matches it against the audit trail. (wrk calls the first thread's
-- request() once more, before the run, only to check it; that one is never
-- sent and gets no N.)
--
-- done() writes the counts to the file named by $SOAK_COUNTS, one
-- tab-separated fact a line:
--   thread  ID  LAST_N
--   sent    KIND  COUNT
--   status  KIND  STATUS  COUNT   (responses wrk received, by x-request-id)

kinds = { "get", "put", "denied", "schema", "malformed", "unauth" }

local threads = {}
local next_id = 1

function setup(thread)
   thread:set("thread_id", next_id)
   -- wrk calls the first thread's request() once before the run, to check
   -- the request parses, and never sends that one: it gets no id.
   thread:set("verifying", next_id == 1)
   next_id = next_id + 1
   table.insert(threads, thread)
end

function init(args)
   platform = args[1]
   support = args[2]
   org = args[3]
   if not (platform and support and org) then
      error("usage: -- PLATFORM_TOKEN SUPPORT_TOKEN ORG_ID")
   end
   path = "/api/organizations/" .. org
   n = 0
   sent = {}
   -- "KIND STATUS" -> count: wrk copies only flat tables between threads.
   statuses = {}
   for _, kind in ipairs(kinds) do
      sent[kind] = 0
   end
end

-- A valid update (see schemas/organization-update.json), about 300 bytes;
-- client_secret is writeOnly, so the audit trail must show it redacted.
local function update_body(i)
   return string.format(
      '{"name":"Soak Org %010d","client_id":"0oa1b2c3d4e5f6g7h8i9",' ..
      '"client_secret":"soak-secret-0123456789abcdef0123456789abcdef",' ..
      '"issuer":"https://idp.soak.example/oauth2/aus1a2b3c4d5e6f7g8h9i0j1k2l3m4n5o6p7/default",' ..
      '"sso_domain":"soak.example","sso_org_id":"org_0123456789abcdef0123456789"}', i)
end

-- Wrong type for name, an http issuer, an unknown field: 422.
local schema_body = '{"name":42,"issuer":"http://idp.soak.example","sso_domain":"not a host!",' ..
   '"unknown_field":true}'

-- Cut off mid-object: 400 invalid_json.
local malformed_body = '{"name":"Soak Org","client_id":'

function request()
   if verifying then
      verifying = false
      return wrk.format("GET", path, { ["x-request-id"] = "soak-verify" }, nil)
   end
   n = n + 1
   local kind = kinds[(n - 1) % #kinds + 1]
   sent[kind] = sent[kind] + 1
   local headers = {
      ["x-request-id"] = string.format("soak-%s-%d-%d", kind, thread_id, n),
      ["User-Agent"] = "polytomic-gateway-soak",
   }
   if kind == "get" then
      headers["Authorization"] = "Bearer " .. platform
      return wrk.format("GET", path, headers, nil)
   elseif kind == "unauth" then
      return wrk.format("GET", path, headers, nil)
   end
   headers["Content-Type"] = "application/json"
   local body
   if kind == "put" then
      headers["Authorization"] = "Bearer " .. platform
      body = update_body(n)
   elseif kind == "denied" then
      headers["Authorization"] = "Bearer " .. support
      body = update_body(n)
   elseif kind == "schema" then
      headers["Authorization"] = "Bearer " .. platform
      body = schema_body
   else -- malformed
      headers["Authorization"] = "Bearer " .. platform
      body = malformed_body
   end
   return wrk.format("PUT", path, headers, body)
end

function response(status, headers, body)
   local id = headers["x-request-id"] or headers["X-Request-Id"] or ""
   local kind = string.match(id, "^soak%-(%a+)%-") or "other"
   local key = kind .. " " .. status
   statuses[key] = (statuses[key] or 0) + 1
end

function done(summary, latency, requests)
   local out = io.stderr
   local file = os.getenv("SOAK_COUNTS")
   if file and file ~= "" then
      out = assert(io.open(file, "w"))
   end
   for _, thread in ipairs(threads) do
      out:write(string.format("thread\t%d\t%d\n", thread:get("thread_id"), thread:get("n") or 0))
      local thread_sent = thread:get("sent") or {}
      for kind, count in pairs(thread_sent) do
         out:write(string.format("sent\t%s\t%d\n", kind, count))
      end
      local thread_statuses = thread:get("statuses") or {}
      for key, count in pairs(thread_statuses) do
         local kind, status = string.match(key, "^(%S+) (%d+)$")
         out:write(string.format("status\t%s\t%s\t%d\n", kind, status, count))
      end
   end
   out:write(string.format("wrk\trequests\t%d\n", summary.requests))
   out:write(string.format("wrk\tduration_us\t%d\n", summary.duration))
   for name, count in pairs(summary.errors) do
      out:write(string.format("wrk\terrors_%s\t%d\n", name, count))
   end
   out:write(string.format("wrk\tlatency_p50_us\t%d\n", latency:percentile(50)))
   out:write(string.format("wrk\tlatency_p99_us\t%d\n", latency:percentile(99)))
   if out ~= io.stderr then
      out:close()
   end
end
