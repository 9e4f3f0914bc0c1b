-- Argo CD health check for switchyard.dev/ServiceRoute (argocd-cm key
-- resource.customizations.health.switchyard.dev_ServiceRoute). Runs without the string library
-- (Argo CD opens only base, table and a safe os unless useOpenLibs is set).
--
-- Healthy:     the operator saw this generation and Ready=True (accepted, programmed on every
--              ready node, at least one ready backend).
-- Degraded:    Accepted=False, a verdict only a change can lift: Invalid, NoNetwork (the
--              namespace belongs to no accepted PodNetwork), Conflict (a Service of the same
--              name), VirtualIPUnavailable (the requested address is held by another route).
-- Progressing: no status yet, an older generation, NotProgrammed (agents still applying) or
--              NoReadyBackends (no selected pod is ready yet).
local hs = {}

local function condition(conditions, type_)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local generation = obj.metadata and obj.metadata.generation
local status = obj.status
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to report on this ServiceRoute"
  return hs
end
if generation ~= nil and status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. tostring(generation)
    .. " (it reported on " .. tostring(status.observedGeneration) .. ")"
  return hs
end

local accepted = condition(status.conditions, "Accepted")
local ready = condition(status.conditions, "Ready")
local programmed = condition(status.conditions, "Programmed")
local refs = condition(status.conditions, "ResolvedRefs")

if accepted ~= nil and accepted.status == "False" then
  hs.status = "Degraded"
  hs.message = tostring(accepted.reason) .. ": " .. tostring(accepted.message)
  return hs
end
if ready == nil or (ready.observedGeneration ~= nil and generation ~= nil and ready.observedGeneration ~= generation) then
  hs.status = "Progressing"
  hs.message = "waiting for the Ready condition"
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = tostring(ready.message)
  if refs ~= nil and refs.status == "False" then
    hs.message = hs.message .. "; " .. tostring(refs.reason) .. ": " .. tostring(refs.message)
  end
  return hs
end
if ready.reason == "NotAccepted" then
  hs.status = "Degraded"
  hs.message = tostring(ready.reason) .. ": " .. tostring(ready.message)
  return hs
end
hs.status = "Progressing"
if ready.reason == "NotProgrammed" and programmed ~= nil and programmed.status == "False" then
  hs.message = "NotProgrammed: " .. tostring(programmed.message)
else
  hs.message = tostring(ready.reason) .. ": " .. tostring(ready.message)
end
return hs
