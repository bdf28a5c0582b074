-- Argo CD health check for flowstore.dev resources (FlowStorage and StoredFlow share it).
-- Reads the kstatus-style status the operator writes: observedGeneration and the conditions
-- Ready (always present once reconciled), Reconciling (only while true: working or retrying)
-- and Stalled (only when a person must act). Plain Lua 5.1, as Argo CD's gopher-lua runs it.
-- docs/argocd.md embeds this file; tests/test_argocd_health.py runs it on captured statuses.
local hs = {}

local function condition(ctype)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function message_of(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local ready = condition("Ready")

-- spec.suspend: the operator stores and checks nothing; say so before anything else.
if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  if ready ~= nil and ready.reason == "Suspended" then
    hs.message = message_of(ready, "spec.suspend is true")
  else
    hs.message = "spec.suspend is true; waiting for the operator to acknowledge it"
  end
  return hs
end

-- The status must describe the current spec, or it says nothing about it.
local generation = obj.metadata.generation
local observed = nil
if obj.status ~= nil then
  observed = obj.status.observedGeneration
end
if obj.status == nil or obj.status.conditions == nil or #obj.status.conditions == 0
    or observed == nil or (generation ~= nil and observed < generation) then
  hs.status = "Progressing"
  if generation ~= nil then
    hs.message = string.format("Waiting for the operator to observe generation %d", generation)
  else
    hs.message = "Waiting for the operator to observe the resource"
  end
  return hs
end

local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = message_of(stalled, message_of(ready, "Stalled"))
  return hs
end

if ready == nil then
  hs.status = "Progressing"
  hs.message = message_of(condition("Reconciling"), "Waiting for the Ready condition")
  return hs
end

if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message_of(ready, "Ready")
  return hs
end

-- Suspended through its FlowStorage (a StoredFlow whose storage has spec.suspend: true).
if ready.reason == "Suspended" then
  hs.status = "Suspended"
  hs.message = message_of(ready, "Suspended")
  return hs
end

if ready.status == "False" then
  local reconciling = condition("Reconciling")
  if reconciling ~= nil and reconciling.status == "True" then
    -- A temporary failure (backend down, storage not created yet): the operator retries.
    local msg = message_of(ready, ready.reason or "failed")
    if string.sub(msg, 1, 10) ~= "Retrying: " then
      msg = "Retrying: " .. msg
    end
    hs.status = "Progressing"
    hs.message = msg
    return hs
  end
  hs.status = "Degraded"
  hs.message = message_of(ready, ready.reason or "Ready is False")
  return hs
end

-- Ready=Unknown: work in progress.
hs.status = "Progressing"
hs.message = message_of(ready, "Reconciling")
return hs
