{{/*
The settings every natter-server process reads besides the connections and
secrets of "natter.env": one NATTER_* variable per value (README
"Configuration"), then the user's extraEnv. Each service ignores what is not
its own.
*/}}
{{- define "natter.settingsEnv" -}}
# The admin API is off while the Secret has no admin-secret.
- name: NATTER_ADMIN_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "natter.secretName" . }}
      key: admin-secret
      optional: true
- name: RUST_LOG
  value: {{ .Values.rustLog | quote }}
- name: NATTER_REQUEST_TIMEOUT_SECS
  value: {{ .Values.requestTimeoutSecs | quote }}
- name: NATTER_SHUTDOWN_GRACE_SECS
  value: {{ .Values.shutdownGraceSecs | quote }}
- name: NATTER_DRAIN_DELAY_SECS
  value: {{ .Values.drainDelaySecs | quote }}
- name: NATTER_HTTP_TIMEOUT_SECS
  value: {{ .Values.http.timeoutSecs | quote }}
- name: NATTER_HTTP_MAX_CONNECTIONS
  value: {{ .Values.http.maxConnections | quote }}
- name: NATTER_DATABASE_STATEMENT_TIMEOUT_SECS
  value: {{ .Values.postgres.statementTimeoutSecs | quote }}
- name: NATTER_DATABASE_LOCK_TIMEOUT_SECS
  value: {{ .Values.postgres.lockTimeoutSecs | quote }}
- name: NATTER_DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECS
  value: {{ .Values.postgres.idleInTransactionTimeoutSecs | quote }}
- name: NATTER_DATABASE_KEEPALIVE_SECS
  value: {{ .Values.postgres.keepaliveSecs | quote }}
- name: NATTER_HASH_CONCURRENCY
{{- if .Values.auth.hashConcurrency }}
  value: {{ .Values.auth.hashConcurrency | quote }}
{{- else }}
  # The CPUs the container may use: its limit, else the node's.
  valueFrom:
    resourceFieldRef:
      resource: limits.cpu
      divisor: "1"
{{- end }}
- name: NATTER_HASH_WAIT_MS
  value: {{ .Values.auth.hashWaitMs | quote }}
- name: NATTER_LOGIN_MAX_FAILURES
  value: {{ .Values.auth.login.maxFailures | quote }}
- name: NATTER_LOGIN_WINDOW_SECS
  value: {{ .Values.auth.login.windowSecs | quote }}
- name: NATTER_LOGIN_MAX_DELAY_MS
  value: {{ .Values.auth.login.maxDelayMs | quote }}
- name: NATTER_WS_PING_SECS
  value: {{ .Values.gateway.ws.pingSecs | quote }}
- name: NATTER_WS_IDLE_SECS
  value: {{ .Values.gateway.ws.idleSecs | quote }}
- name: NATTER_WS_QUEUE
  value: {{ .Values.gateway.ws.queue | quote }}
- name: NATTER_WS_COALESCE_MS
  value: {{ .Values.gateway.ws.coalesceMs | quote }}
- name: NATTER_WS_RATE
  value: {{ .Values.gateway.ws.rate | quote }}
- name: NATTER_WS_BURST
  value: {{ .Values.gateway.ws.burst | quote }}
- name: NATTER_WS_MAX_SOCKETS
  value: {{ .Values.gateway.ws.maxSockets | quote }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* A component's NATTER_DATABASE_POOL: its own databasePool, else postgres.pool. */}}
{{- define "natter.databasePool" -}}
{{- $c := index .root.Values .component -}}
{{- if and (hasKey $c "databasePool") (not (kindIs "invalid" $c.databasePool)) -}}
{{- $c.databasePool -}}
{{- else -}}
{{- .root.Values.postgres.pool -}}
{{- end -}}
{{- end -}}
