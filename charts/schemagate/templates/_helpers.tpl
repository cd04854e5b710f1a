{{/* Chart name, truncated to the 63 characters label values allow. */}}
{{- define "schemagate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name when it already contains the chart name ("schemagate" by default). */}}
{{- define "schemagate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "schemagate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "schemagate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: schemagate
{{- end }}

{{/* Selector labels of the operator pod (the same as manifests/workload.yaml: one operator per cluster). */}}
{{- define "schemagate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "schemagate.name" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "schemagate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "schemagate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "schemagate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The rules the operator needs inside a watched namespace (or cluster-wide); the same as manifests/rbac.yaml. */}}
{{- define "schemagate.namespacedRules" -}}
# The resources it reconciles; status is the only thing it writes on them.
- apiGroups: [schemagate.dev]
  resources: [databasemigrations]
  verbs: [get, list, watch]
- apiGroups: [schemagate.dev]
  resources: [databasemigrations/status]
  verbs: [get, patch]
# DatabaseRestores: read, their status written (the restore Job is created like the step Jobs).
- apiGroups: [schemagate.dev]
  resources: [databaserestores]
  verbs: [get, list, watch]
- apiGroups: [schemagate.dev]
  resources: [databaserestores/status]
  verbs: [get, patch]
# One Job per step (owned by the resource so the garbage collector removes them); patched only to end a Job
# whose pod can never start (activeDeadlineSeconds: 1), so its pod goes at once. A Job's pod template is
# immutable, so `patch` adds nothing to what `create` already allows.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch]
# Step results come back as the Job pods' termination messages; patch removes the rollout gate.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, patch]
# A step result too large for its termination message (the pod's 12 KiB are shared by its containers) is read
# whole from the line the step printed in its container's log.
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
# Only to report SecretNotFound and to learn the database identity for the Lease; never copied anywhere.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
{{- end }}
