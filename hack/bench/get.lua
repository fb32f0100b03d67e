-- A plain GET of the URL's path (wrk's static fast path: no request() function).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")
