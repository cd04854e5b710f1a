{{/*
schemagate chart helpers: copy this file into your chart's templates/ to wait for a DatabaseMigration from an
init container with least privilege. `schemagate wait` only needs `get` on the one DatabaseMigration.

  initContainers:
    {{- include "schemagate.waitInitContainer" (dict "migration" "shop" "revision" "0002" "image" "schemagate:0.1.0" "timeout" "10m") | nindent 4 }}

  {{ include "schemagate.waitRBAC" (dict "name" "shop-app-wait" "migration" "shop" "serviceAccount" "shop-app" "namespace" .Release.Namespace) }}

Exit codes of the init container: 0 Ready, 3 Blocked/Failed (the reason is in the termination message:
`kubectl describe pod`), 4 RBAC/configuration, 124 timed out.
*/}}

{{- define "schemagate.waitInitContainer" -}}
- name: {{ .containerName | default "wait-for-migration" }}
  image: {{ .image | quote }}
  imagePullPolicy: {{ .imagePullPolicy | default "IfNotPresent" }}
  args:
    - wait
    - {{ .migration | quote }}
    {{- with .revision }}
    - --revision={{ . }}
    {{- end }}
    - --timeout={{ .timeout | default "0" }}
  env:
    - name: POD_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    - name: SCHEMAGATE_TERMINATION_LOG
      value: /dev/termination-log
  terminationMessagePolicy: FallbackToLogsOnError
  resources:
    requests: {cpu: 10m, memory: 64Mi}
    limits: {memory: 128Mi}
  securityContext:
    runAsNonRoot: true
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: [ALL]
    seccompProfile:
      type: RuntimeDefault
{{- end }}

{{- define "schemagate.waitRBAC" -}}
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ .name }}
  namespace: {{ .namespace }}
rules:
  - apiGroups: [schemagate.dev]
    resources: [databasemigrations]
    resourceNames: [{{ .migration | quote }}]
    verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ .name }}
  namespace: {{ .namespace }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ .name }}
subjects:
  - kind: ServiceAccount
    name: {{ .serviceAccount }}
    namespace: {{ .namespace }}
{{- end }}
