-- Argo CD health check for flowstore.dev resources: FlowStorage and StoredFlow share it.
-- It reads the kstatus-style status the operator writes: status.observedGeneration and the
-- conditions Ready (present once reconciled), Reconciling (only while true: working or
-- retrying) and Stalled (only when a person must act); a suspended object says so in its
-- spec, in Ready's reason, or in a Suspended condition.
--
-- Argo CD runs a check from argocd-cm in gopher-lua with the base, table and package
-- libraries only: `string` and `math` are nil unless
-- resource.customizations.useOpenLibs.<group>_<kind> is "true". So this script calls no
-- library function but ipairs and tostring, and builds strings with `..`: it behaves the
-- same with the libraries closed or open. Argo CD never runs it for an object being
-- deleted; it shows those as "Progressing: Pending deletion" itself.
--
-- docs/argocd.md embeds this file; tests/packaging/test_argocd_health.py runs it, as Argo CD does, on
-- statuses captured from the real operator.
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

local function is_true(c)
  return c ~= nil and c.status == "True"
end

local function message_of(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local ready = condition("Ready")
local suspended = condition("Suspended")

-- How the operator acknowledges a suspension: a Suspended condition, or Ready's reason.
local function suspension_message()
  if is_true(suspended) then
    return message_of(suspended, "Suspended")
  end
  if ready ~= nil and ready.reason == "Suspended" then
    return message_of(ready, "Suspended")
  end
  return nil
end

-- spec.suspend: the operator stores and checks nothing. It wins over whatever the status
-- said before (Ready, Stalled, a failure), and over a generation not yet observed.
if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = suspension_message() or "spec.suspend is true; waiting for the operator to acknowledge it"
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
    hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  else
    hs.message = "Waiting for the operator to observe the resource"
  end
  return hs
end

-- Suspended through its FlowStorage (a StoredFlow whose storage has spec.suspend: true):
-- this too wins over a Ready=True or Stalled=True written before the suspension.
local suspension = suspension_message()
if suspension ~= nil then
  hs.status = "Suspended"
  hs.message = suspension
  return hs
end

local stalled = condition("Stalled")
if is_true(stalled) then
  hs.status = "Degraded"
  hs.message = message_of(stalled, message_of(ready, "Stalled"))
  return hs
end

local reconciling = condition("Reconciling")
if ready == nil then
  hs.status = "Progressing"
  hs.message = message_of(reconciling, "Waiting for the Ready condition")
  return hs
end

if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message_of(ready, "Ready")
  return hs
end

if ready.status == "False" then
  if is_true(reconciling) then
    -- A temporary failure (backend down, storage not created yet): the operator retries, and
    -- Reconciling's message says so ("Retrying: " and the failure).
    hs.status = "Progressing"
    hs.message = message_of(reconciling, "Retrying: " .. message_of(ready, ready.reason or "failed"))
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
