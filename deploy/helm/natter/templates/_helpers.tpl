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

{{/* Where tls.caSecret is mounted. */}}
{{- define "natter.caFile" -}}
/etc/natter/ca/{{ .Values.tls.caKey }}
{{- end -}}

{{/* The CA volume and its mount, when tls.caSecret is set. */}}
{{- define "natter.caVolume" -}}
{{- if .Values.tls.caSecret }}
- name: ca
  secret:
    secretName: {{ .Values.tls.caSecret }}
{{- end }}
{{- end -}}
{{- define "natter.caMount" -}}
{{- if .Values.tls.caSecret }}
- name: ca
  mountPath: /etc/natter/ca
  readOnly: true
{{- end }}
{{- end -}}

{{/*
Environment every natter-server process reads (the configuration table in
README.md); `component` is the service (its NATS user), `root` the chart.
The database password goes in PGPASSWORD, which sqlx reads when the URL has
none: it never appears in the URL, the pod spec or a log line.
*/}}
{{- define "natter.env" -}}
{{- $root := .root -}}
{{- with $root }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "natter.secretName" . }}
      key: database-password
- name: NATTER_DATABASE_URL
  value: {{ printf "postgres://%s@%s:%v/%s?sslmode=%s%s" .Values.postgres.user .Values.postgres.host .Values.postgres.port .Values.postgres.database .Values.postgres.sslMode (ternary (printf "&sslrootcert=%s" (include "natter.caFile" .)) "" (ne .Values.tls.caSecret "")) | quote }}
{{- with .Values.postgres.readHost }}
- name: NATTER_DATABASE_READ_URL
  value: {{ printf "postgres://%s@%s:%v/%s?sslmode=%s%s" $root.Values.postgres.user . $root.Values.postgres.port $root.Values.postgres.database $root.Values.postgres.sslMode (ternary (printf "&sslrootcert=%s" (include "natter.caFile" $root)) "" (ne $root.Values.tls.caSecret "")) | quote }}
{{- end }}
- name: NATTER_JWT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "natter.secretName" . }}
      key: jwt-secret
- name: NATTER_BUS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "natter.secretName" . }}
      key: bus-key
- name: NATTER_NATS_URL
  value: {{ .Values.nats.url | quote }}
{{- if and .Values.nats.users $.component }}
- name: NATTER_NATS_USER
  value: {{ $.component | quote }}
- name: NATTER_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "natter.secretName" . }}
      key: nats-{{ $.component }}-password
{{- end }}
- name: NATTER_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "natter.secretName" . }}
      key: redis-password
      optional: true
{{- if .Values.tls.caSecret }}
- name: NATTER_NATS_CA
  value: {{ include "natter.caFile" . | quote }}
- name: NATTER_REDIS_CA
  value: {{ include "natter.caFile" . | quote }}
{{- end }}
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
{{- end }}
{{- end -}}
