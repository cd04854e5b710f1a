-- Argo CD health check for schemagate.dev/DatabaseMigration
-- (argocd-cm key: resource.customizations.health.schemagate.dev_DatabaseMigration)
--
-- Reads the status contract of docs/architecture.md:
--   spec.suspend                               -> Suspended
--   never observed (no status, or the CRD's    -> Progressing
--     default observedGeneration -1)
--   observedGeneration stale                   -> Progressing (never report health of an older spec)
--   phase Blocked or Failed                    -> Degraded, with the operator's reason and message
--   phase Succeeded and Ready=True             -> Healthy
--   anything else (Pending, BackingUp, ...)    -> Progressing, with the current phase
--
-- Uses only what Argo CD opens for a script from argocd-cm: the base, table and package libraries (no string,
-- math, io or debug library unless resource.customizations.useOpenLibs.<group>_<kind> is "true").
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

local function nonempty(s)
  return s ~= nil and s ~= ""
end

if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "Suspended (spec.suspend is true)"
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

if obj.status == nil or obj.status.observedGeneration == nil or obj.status.observedGeneration < 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the schemagate operator to observe this DatabaseMigration (generation " ..
    tostring(generation) .. ", not observed yet)"
  return hs
end

if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the schemagate operator to observe generation " .. tostring(generation) ..
    " (status describes generation " .. tostring(obj.status.observedGeneration) .. ")"
  return hs
end

local phase = obj.status.phase
local ready = condition("Ready")

if phase == "Blocked" or phase == "Failed" then
  local reason = nil
  local message = nil
  if ready ~= nil then
    reason = ready.reason
    message = ready.message
  end
  local lastError = obj.status.lastError
  if not nonempty(reason) and lastError ~= nil then
    reason = lastError.reason
  end
  if not nonempty(message) and lastError ~= nil then
    message = lastError.message
  end
  local text = phase
  if nonempty(reason) then
    text = text .. " (" .. reason .. ")"
  end
  if nonempty(message) then
    text = text .. ": " .. message
  end
  if phase == "Blocked" and not nonempty(message) and obj.status.violations ~= nil and
    obj.status.violations.total ~= nil then
    text = text .. " [" .. tostring(obj.status.violations.total) .. " violating rows]"
  end
  hs.status = "Degraded"
  hs.message = text
  return hs
end

if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "Suspended"
  return hs
end

if phase == "Succeeded" and ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  if nonempty(obj.status.currentRevision) then
    hs.message = "Migrated to revision " .. obj.status.currentRevision
  else
    hs.message = "Ready"
  end
  return hs
end

hs.status = "Progressing"
if nonempty(phase) then
  hs.message = phase
else
  hs.message = "Waiting for the schemagate operator"
end
if ready ~= nil and nonempty(ready.message) then
  hs.message = hs.message .. ": " .. ready.message
end
return hs
