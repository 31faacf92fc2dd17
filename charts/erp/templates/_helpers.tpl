{{/* Names, labels and the per-service view of the values. */}}

{{- define "erp.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "erp.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one service: (dict "root" $ "name" "order") */}}
{{- define "erp.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{/* The fully qualified gRPC service name registered with health. */}}
{{- define "erp.grpcName" -}}
{{- $names := dict "order" "erp.order.v1.OrderService" "inventory" "erp.inventory.v1.InventoryService" "warehouse" "erp.warehouse.v1.WarehouseService" "carrier" "erp.carrier.v1.CarrierService" "procurement" "erp.procurement.v1.ProcurementService" "finance" "erp.finance.v1.FinanceService" "orchestrator" "erp.orchestrator.v1.OrchestratorService" -}}
{{- get $names . -}}
{{- end -}}

{{/* defaults merged with services.<name>: (dict "root" $ "name" "order") */}}
{{- define "erp.service" -}}
{{- $override := get .root.Values.services .name | default dict -}}
{{- $merged := mergeOverwrite (deepCopy .root.Values.defaults) (deepCopy $override) -}}
{{- toYaml $merged -}}
{{- end -}}

{{- define "erp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "erp.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "erp.databaseSecret" -}}
{{- default (printf "%s-database" (include "erp.fullname" .)) .Values.database.existingSecret -}}
{{- end -}}

{{- define "erp.redisSecret" -}}
{{- default (printf "%s-redis" (include "erp.fullname" .)) .Values.redis.existingSecret -}}
{{- end -}}

{{- define "erp.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* "true" when the keys come from the JWKS Secret (not from the issuer's endpoint). */}}
{{- define "erp.jwksFromSecret" -}}
{{- and (eq .Values.auth.mode "jwt") (not .Values.auth.jwksUrl) -}}
{{- end -}}

{{/* The Secret holding the JWKS. */}}
{{- define "erp.authSecret" -}}
{{- default (printf "%s-auth" (include "erp.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{/* The database URL of service `name` (dict root, name): the shared URL with its `{service}`
placeholder, or with `database.perServiceUsers` the service's own URL (its own user, rights on
its own database only) under `<secretKey>-<name>`. */}}
{{- define "erp.databaseEnv" -}}
- name: ERP__DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ include "erp.databaseSecret" .root }}
      key: {{ if .root.Values.database.perServiceUsers }}{{ printf "%s-%s" .root.Values.database.secretKey .name }}{{ else }}{{ .root.Values.database.secretKey }}{{ end }}
{{- end -}}

{{/* Environment every erp process gets: where the database, Redis and the peers are. */}}
{{- define "erp.commonEnv" -}}
- name: ERP__AUTH__MODE
  value: {{ .Values.auth.mode | quote }}
- name: ERP__AUTH__ISSUER
  value: {{ .Values.auth.issuer | quote }}
- name: ERP__AUTH__AUDIENCE
  value: {{ .Values.auth.audience | quote }}
- name: ERP__AUTH__GENERATE_KEY
  value: "false"
{{- if .Values.auth.jwksUrl }}
- name: ERP__AUTH__JWKS_URL
  value: {{ .Values.auth.jwksUrl | quote }}
- name: ERP__AUTH__JWKS_REFRESH_S
  value: {{ .Values.auth.jwksRefreshSeconds | quote }}
{{- if .Values.auth.jwksCaConfigMap }}
- name: ERP__AUTH__JWKS_CA_FILE
  value: /etc/erp/jwks-ca/ca.crt
{{- end }}
{{- else }}
- name: ERP__AUTH__JWKS_FILE
  value: /etc/erp/auth/jwks.json
{{- end }}
- name: ERP__DATABASE__MAX_CONNECTIONS
  value: {{ .Values.database.maxConnections | quote }}
- name: ERP__BUS__KIND
  value: redis
- name: ERP__BUS__REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "erp.redisSecret" . }}
      key: {{ .Values.redis.secretKey }}
{{- $root := . }}
{{- range $name := list "order" "inventory" "warehouse" "carrier" "procurement" "finance" "orchestrator" }}
- name: ERP__PEERS__{{ upper $name }}
  value: {{ printf "%s://%s-%s:%d" (ternary "https" "http" $root.Values.tls.enabled) (include "erp.fullname" $root) $name (int $root.Values.port) | quote }}
{{- end }}
{{- end -}}
