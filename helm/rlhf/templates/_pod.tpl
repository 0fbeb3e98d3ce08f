{{/* Pod spec parts every rlhf process shares. */}}

{{/* Pod template metadata: include "rlhf.podMetadata" (list . component) */}}
{{- define "rlhf.podMetadata" -}}
{{- $ctx := index . 0 -}}
labels:
  {{- include "rlhf.selectorLabels" (list $ctx (index . 1)) | nindent 2 }}
  {{- with $ctx.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  {{- include "rlhf.configChecksum" (list $ctx (index . 1)) | nindent 2 }}
  {{- with $ctx.Values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{- define "rlhf.podSecurity" -}}
serviceAccountName: {{ include "rlhf.serviceAccountName" . }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* Pod-level scheduling of a component's values: nodeSelector, tolerations, affinity,
     topologySpreadConstraints, priorityClassName, runtimeClassName. */}}
{{- define "rlhf.podPlacement" -}}
{{- with .priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with .runtimeClassName }}
runtimeClassName: {{ . | quote }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* resources plus GPUs: include "rlhf.resources" (list resources gpuValues count) */}}
{{- define "rlhf.resources" -}}
{{- $res := deepCopy (index . 0) }}
{{- $gpu := index . 1 }}
{{- if $gpu.enabled }}
{{- $gpus := dict $gpu.resourceName (index . 2 | int64) }}
{{- $_ := set $res "limits" (merge (default dict $res.limits) $gpus) }}
{{- $_ := set $res "requests" (merge (default dict $res.requests) $gpus) }}
{{- end }}
{{- toYaml $res }}
{{- end }}

{{/* A component's own init containers (values.<component>.initContainers). */}}
{{- define "rlhf.initContainers" -}}
{{- with .initContainers }}
initContainers:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The env list of a process: the chart's secret references, then the component's own
     `env` entries. include "rlhf.containerEnv" (list . component values) */}}
{{- define "rlhf.containerEnv" -}}
{{- include "rlhf.env" (list (index . 0) (index . 1)) }}
{{- with (index . 2).env }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* envFrom of a process: the chart's ConfigMaps, then the component's own `envFrom`. */}}
{{- define "rlhf.containerEnvFrom" -}}
{{- include "rlhf.envFrom" (list (index . 0) (index . 1)) }}
{{- with (index . 2).envFrom }}
{{ toYaml . }}
{{- end }}
{{- end }}
