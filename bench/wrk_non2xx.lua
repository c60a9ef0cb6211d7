-- wrk script for bench/api_bench.sh: prints the status and body of every
-- answer that is not 200 to stderr. Slows wrk down (every body goes through
-- Lua), so it is for diagnosing failed rounds, not for measuring:
--   BACKFLOW_BENCH_WRK_SCRIPT=bench/wrk_non2xx.lua bench/api_bench.sh --keep
response = function(status, headers, body)
  if status ~= 200 then
    io.stderr:write(status .. " " .. body .. "\n")
  end
end
