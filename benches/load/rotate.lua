-- wrk script: every request carries the next token of a file (one token a line).
--   wrk -s rotate.lua <url> -- <token file> <count> [prime <offset>]
-- The first <count> lines are loaded before wrk's clock starts (script load/init run
-- before the measured window) and used round-robin. With `prime`, requests start at token
-- <offset>+1 and the thread stops after <count>-<offset> responses: run.sh repeats short
-- priming runs (wrk's main thread always sleeps the whole -d) until every token was sent
-- once, to fill the auth service's cache.
local tokens, n, i = {}, 0, 0

function init(args)
  local file, limit = args[1], tonumber(args[2])
  for line in io.lines(file) do
    if n >= limit then break end
    n = n + 1
    tokens[n] = "Bearer " .. line
  end
  if n == 0 then error("no tokens in " .. file) end
  if args[3] == "prime" then
    local seen, offset = 0, tonumber(args[4] or "0")
    i = offset
    response = function(status, headers, body)
      seen = seen + 1
      if seen >= n - offset then wrk.thread:stop() end
    end
  end
end

function request()
  i = i + 1
  if i > n then i = 1 end
  return wrk.format("GET", nil, { ["Authorization"] = tokens[i] })
end
