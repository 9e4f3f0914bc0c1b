-- Argo CD health check for switchyard.dev/PodNetwork (argocd-cm key
-- resource.customizations.health.switchyard.dev_PodNetwork). Runs without the string library
-- (Argo CD opens only base, table and a safe os unless useOpenLibs is set).
--
-- Healthy:     the operator saw this generation and Ready=True (BlocksAllocated).
-- Degraded:    a verdict only a change of spec (or of another network) can lift:
--              Accepted=False (Invalid, Overlap, DuplicateDefault) or Ready=False PoolExhausted.
-- Progressing: no status yet, an older generation, or Ready=False for a passing reason
--              (NodeAddressMissing: a node has no InternalIP yet).
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
  hs.message = "waiting for the operator to report on this PodNetwork"
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
local resolved = condition(status.conditions, "NamespacesResolved")

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
  if resolved ~= nil and resolved.status == "False" then
    -- Still working; say what needs a look.
    hs.message = hs.message .. "; " .. tostring(resolved.reason) .. ": " .. tostring(resolved.message)
  end
  return hs
end
if ready.reason == "PoolExhausted" or ready.reason == "NotAccepted" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = tostring(ready.reason) .. ": " .. tostring(ready.message)
return hs
