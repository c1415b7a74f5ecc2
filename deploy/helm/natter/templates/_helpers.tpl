{{/* Names and labels shared by every object. */}}
{{- define "natter.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "natter.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "natter.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "natter.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "natter.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "natter.fullname" .)) -}}
{{- end -}}

{{- define "natter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "natter.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* Environment every natter-server process reads (the configuration table in README.md). */}}
{{- define "natter.env" -}}
- name: NATTER_DB_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "natter.secretName" . }}
      key: database-password
- name: NATTER_DATABASE_URL
  value: {{ printf "postgres://%s:$(NATTER_DB_PASSWORD)@%s:%v/%s" .Values.postgres.user .Values.postgres.host .Values.postgres.port .Values.postgres.database | quote }}
{{- with .Values.postgres.readHost }}
- name: NATTER_DATABASE_READ_URL
  value: {{ printf "postgres://%s:$(NATTER_DB_PASSWORD)@%s:%v/%s" $.Values.postgres.user . $.Values.postgres.port $.Values.postgres.database | quote }}
{{- end }}
- name: NATTER_JWT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "natter.secretName" . }}
      key: jwt-secret
- name: NATTER_NATS_URL
  value: {{ .Values.nats.url | quote }}
- name: NATTER_STREAM_REPLICAS
  value: {{ .Values.streams.replicas | quote }}
- name: NATTER_EVENTS_MAX_AGE
  value: {{ .Values.streams.eventsMaxAge | quote }}
- name: NATTER_EVENTS_MAX_BYTES
  value: {{ .Values.streams.eventsMaxBytes | quote }}
- name: NATTER_REDIS_URL
  value: {{ .Values.redis.url | quote }}
- name: NATTER_REDIS_CLUSTER
  value: {{ .Values.redis.cluster | quote }}
- name: NATTER_NAMESPACE
  value: {{ .Values.namespace | quote }}
- name: NATTER_TOKEN_TTL_SECS
  value: {{ .Values.tokenTtlSecs | quote }}
- name: NATTER_REFRESH_TTL_SECS
  value: {{ .Values.refreshTtlSecs | quote }}
- name: NATTER_CONNECTION_LIMIT
  value: {{ .Values.connectionLimit | quote }}
- name: NATTER_HEAD_LIMIT
  value: {{ .Values.headLimit | quote }}
- name: NATTER_PARTITIONS
  value: {{ .Values.partitions | quote }}
- name: NATTER_PUSH_LEASE_SECS
  value: {{ .Values.pushLeaseSecs | quote }}
- name: NATTER_CHANNELS_PER_USER
  value: {{ .Values.channelsPerUser | quote }}
- name: NATTER_SOCKETS_PER_USER
  value: {{ .Values.socketsPerUser | quote }}
- name: NATTER_TRUSTED_PROXIES
  value: {{ .Values.trustedProxies | quote }}
- name: NATTER_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: NATTER_AUTH_ADDR
  value: {{ printf "0.0.0.0:%v" .Values.auth.port | quote }}
- name: NATTER_GATEWAY_ADDR
  value: {{ printf "0.0.0.0:%v" .Values.gateway.port | quote }}
- name: NATTER_MESSAGE_ADDR
  value: {{ printf "0.0.0.0:%v" .Values.message.port | quote }}
- name: NATTER_PUSH_ADDR
  value: {{ printf "0.0.0.0:%v" .Values.push.port | quote }}
{{- if .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.otel.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ .Values.otel.protocol | quote }}
{{- end }}
{{- end -}}
