-- wrk script: POST a chat request, rotating through one bearer token per tenant.
-- Usage: wrk ... -s chat.lua URL -- TOKENS_FILE BODY_FILE ["Header: value" ...]
--   TOKENS_FILE  one token a line (100 tenants -> 100 lines); request i uses token i mod n.
--   BODY_FILE    the JSON body sent with every request.
-- Requests are built once in init(), so the hot path only picks the next prebuilt one.

local requests = {}
local count = 0
local index = 0

local function read_file(path)
  local file = assert(io.open(path, "rb"), "cannot open " .. path)
  local text = file:read("*a")
  file:close()
  return text
end

function init(args)
  local tokens_file, body_file = args[1], args[2]
  assert(tokens_file and body_file, "usage: -- TOKENS_FILE BODY_FILE [headers...]")
  local body = read_file(body_file)
  local headers = { ["Content-Type"] = "application/json" }
  for i = 3, #args do
    local name, value = string.match(args[i], "^([^:]+):%s*(.*)$")
    assert(name, "bad header argument: " .. args[i])
    headers[name] = value
  end
  local path = wrk.path
  for token in string.gmatch(read_file(tokens_file), "[^\r\n]+") do
    headers["Authorization"] = "Bearer " .. token
    count = count + 1
    requests[count] = wrk.format("POST", path, headers, body)
  end
  assert(count > 0, "no tokens in " .. tokens_file)
  -- Start each thread at a different tenant so threads do not march in step.
  index = math.random(count) - 1
end

function request()
  index = (index % count) + 1
  return requests[index]
end
