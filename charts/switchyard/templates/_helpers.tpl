{{/*
Switchyard's names are fixed (one installation per cluster, in switchyard-system): the node
agents report on Leases in that namespace, the operator elects its leader there, and the
webhook excludes it from validation.
*/}}
{{- define "switchyard.namespace" -}}
{{- if ne .Release.Namespace "switchyard-system" -}}
{{- fail (printf "switchyard must be installed into the namespace switchyard-system (the node agents' report Leases and the operator's leader Lease live there), not %q: use -n switchyard-system --create-namespace" .Release.Namespace) -}}
{{- end -}}
{{- .Release.Namespace -}}
{{- end -}}

{{- define "switchyard.labels" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/part-of: switchyard
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "switchyard.selector" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{/* metadata.annotations with the Argo CD sync wave; nothing when waves are off. */}}
{{- define "switchyard.wave" -}}
{{- if .root.Values.argocd.syncWaves -}}
annotations:
  argocd.argoproj.io/sync-wave: {{ .wave | quote }}
{{- end -}}
{{- end -}}

{{- define "switchyard.image" -}}
{{- $tag := .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s/%s:%s" .root.Values.image.registry (index .root.Values.image.names .component) $tag -}}
{{- end -}}

{{/* Environment every container gets: where the API server is and where traces go, when set. */}}
{{- define "switchyard.commonEnv" -}}
{{- if .Values.apiServer.host }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ .Values.apiServer.host | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ .Values.apiServer.port | quote }}
{{- end }}
{{- if .Values.tracing.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.tracing.otlpEndpoint | quote }}
{{- end }}
{{- end -}}

{{/* The restricted container security context of the operator and the webhook. */}}
{{- define "switchyard.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}
