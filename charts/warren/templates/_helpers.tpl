{{/*
Names, labels, images and the checks that make a render fail.
Every resource is named "<fullname>-<component>" and labelled with
app.kubernetes.io/component: gateway | bridge | redis | rabbitmq.
*/}}

{{/* The chart name, 63 characters at most. */}}
{{- define "warren.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The resource name prefix: the release name, plus the chart name unless the release name has it. */}}
{{- define "warren.fullname" -}}
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

{{/* "<fullname>-<component>", for (dict "ctx" $ "component" "gateway"). */}}
{{- define "warren.componentName" -}}
{{- printf "%s-%s" (include "warren.fullname" .ctx | trunc 54 | trimSuffix "-") .component }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "warren.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "warren.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: warren
{{- with .Values.global.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component, for (dict "ctx" $ "component" "gateway"). */}}
{{- define "warren.selectorLabels" -}}
app.kubernetes.io/name: {{ include "warren.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of one component's resources: common plus selector labels. */}}
{{- define "warren.componentLabels" -}}
{{ include "warren.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Labels of one component's pods: the component's labels without the chart's
and the app's version, which change with every chart release. A pod template
that changes restarts every pod, and a gateway restart is a reconnect wave
for its users: an upgrade to a new chart version with the same values and
image must not roll anything.
*/}}
{{- define "warren.podLabels" -}}
{{ include "warren.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: warren
{{- with .ctx.Values.global.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The ServiceAccount the pods run as. */}}
{{- define "warren.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "warren.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image of one binary, for (dict "ctx" $ "image" .Values.gateway.image). */}}
{{- define "warren.image" -}}
{{- $registry := .ctx.Values.image.registry | trimSuffix "/" }}
{{- $repo := ternary .image.repository (printf "%s/%s" $registry .image.repository) (empty $registry) }}
{{- if .image.digest }}
{{- printf "%s@%s" $repo .image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (.image.tag | default .ctx.Values.image.tag | default .ctx.Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* imagePullSecrets of a pod spec, or nothing. */}}
{{- define "warren.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The session cookie the gateways set (GATEWAY_SESSION_COOKIE_NAME); never a balancer cookie name. */}}
{{- define "warren.sessionCookie" -}}
{{ .Values.gateway.config.sessionCookieName }}
{{- end }}

{{/*
The chart's Secret holds whatever is given by value: the session secret, the
Redis URL and the RabbitMQ URL (or the dev ones). Each can come from an
existing Secret instead.
*/}}
{{- define "warren.secretName" -}}
{{- include "warren.fullname" . }}
{{- end }}

{{/* Does the chart render its own Secret? "true" or "". */}}
{{- define "warren.ownSecret" -}}
{{- if or (not .Values.gateway.sessionSecret.existingSecret) .Values.redis.dev.enabled (not .Values.redis.existingSecret) .Values.amqp.dev.enabled (not .Values.amqp.existingSecret) -}}
true
{{- end }}
{{- end }}

{{/* secretKeyRef of the session secret. */}}
{{- define "warren.sessionSecretRef" -}}
{{- with .Values.gateway.sessionSecret }}
name: {{ .existingSecret | default (include "warren.secretName" $) }}
key: {{ ternary .existingSecretKey "session-secret" (not (empty .existingSecret)) }}
{{- end }}
{{- end }}

{{/* secretKeyRef of the Redis URL (the dev Redis always uses the chart's Secret). */}}
{{- define "warren.redisUrlRef" -}}
{{- if and .Values.redis.existingSecret (not .Values.redis.dev.enabled) }}
name: {{ .Values.redis.existingSecret }}
key: {{ .Values.redis.existingSecretKey }}
{{- else }}
name: {{ include "warren.secretName" . }}
key: redis-url
{{- end }}
{{- end }}

{{/* secretKeyRef of the RabbitMQ URL (the dev RabbitMQ always uses the chart's Secret). */}}
{{- define "warren.amqpUrlRef" -}}
{{- if and .Values.amqp.existingSecret (not .Values.amqp.dev.enabled) }}
name: {{ .Values.amqp.existingSecret }}
key: {{ .Values.amqp.existingSecretKey }}
{{- else }}
name: {{ include "warren.secretName" . }}
key: amqp-url
{{- end }}
{{- end }}

{{/* The bridge address every gateway dials: the bridge Service, spread by kube-proxy per connection. */}}
{{- define "warren.bridgeUrl" -}}
{{- printf "http://%s:%v" (include "warren.componentName" (dict "ctx" . "component" "bridge")) .Values.bridge.service.port }}
{{- end }}

{{/*
topologySpreadConstraints of one component, for
(dict "ctx" $ "component" "gateway" "spread" .Values.gateway.topologySpread).
matchLabelKeys: pod-template-hash counts only the pods of the current rollout.
*/}}
{{- define "warren.topologySpread" -}}
{{- if .spread.enabled }}
topologySpreadConstraints:
{{- range .spread.topologyKeys }}
  - topologyKey: {{ . }}
    maxSkew: {{ $.spread.maxSkew }}
    whenUnsatisfiable: {{ $.spread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "warren.selectorLabels" (dict "ctx" $.ctx "component" $.component) | nindent 8 }}
    matchLabelKeys:
      - pod-template-hash
{{- end }}
{{- end }}
{{- end }}

{{/*
The drain rules (docs/drain.md). Kubernetes counts terminationGracePeriodSeconds
from the start of preStop and sends SIGKILL when it runs out, so it must be
strictly greater than the longest a pod can take:
  gateway: preStop sleep + drain window + shutdown grace (notices over the
           window, then at most the grace for the last tasks);
  bridge:  preStop sleep + shutdown grace (gateway streams and publishes in
           flight, at most the grace).
*/}}
{{- define "warren.checkGrace" -}}
{{- range $component := list "gateway" "bridge" }}
{{- $s := (index $.Values $component).shutdown }}
{{- $need := 0 }}
{{- $rule := "" }}
{{- if eq $component "gateway" }}
{{- $need = add $s.preStopSleepSeconds $s.drainWindowSeconds $s.shutdownGraceSeconds }}
{{- $rule = "preStopSleepSeconds + drainWindowSeconds + shutdownGraceSeconds" }}
{{- else }}
{{- $need = add $s.preStopSleepSeconds $s.shutdownGraceSeconds }}
{{- $rule = "preStopSleepSeconds + shutdownGraceSeconds" }}
{{- end }}
{{- if le (int $s.terminationGracePeriodSeconds) (int $need) }}
{{- fail (printf "%s.shutdown.terminationGracePeriodSeconds (%v) must be greater than %s (%v): the kubelet would kill %ss before they finish draining (docs/drain.md)" $component $s.terminationGracePeriodSeconds $rule $need $component) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Fails when a cookie name would be the app's own session cookie's, in any case. */}}
{{- define "warren.checkCookieName" -}}
{{- if eq (lower (toString .name)) (lower (include "warren.sessionCookie" .ctx)) }}
{{- fail (printf "%s must not be %q: that is the gateway's session cookie, and a balancer cookie of that name would overwrite the session (see docs/kubernetes.md)" .what .name) }}
{{- end }}
{{- end }}

{{/* Pod-level settings shared by gateway and bridge pods, for (dict "ctx" $ "values" .Values.gateway). */}}
{{- define "warren.podScheduling" -}}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
TLS files for one service, from an existing Secret mounted at /etc/warren/tls
(docs/operations.md#managed-services-with-tls), for
(dict "tls" .Values.redis.tls "what" "redis" "prefix" "GATEWAY"). The binary
uses them when the service's URL asks for TLS (rediss://, amqps://).
warren.tlsEnv: the variables naming the files; warren.tlsVolume and
warren.tlsMount: the Secret's keys as files. All empty without a Secret.
*/}}
{{- define "warren.tlsEnv" -}}
{{- if .tls.existingSecret }}
{{- if ne (empty .tls.certKey) (empty .tls.keyKey) }}
{{- fail (printf "%s.tls.certKey and %s.tls.keyKey go together: a client certificate needs its key" .what .what) }}
{{- end }}
{{- if not (or .tls.caKey .tls.certKey) }}
{{- fail (printf "%s.tls.existingSecret is set but neither %s.tls.caKey nor %s.tls.certKey names a key in it" .what .what .what) }}
{{- end }}
{{- with .tls.caKey }}
- name: {{ $.prefix }}_TLS_CA_FILE
  value: /etc/warren/tls/ca.pem
{{- end }}
{{- if .tls.certKey }}
- name: {{ .prefix }}_TLS_CLIENT_CERT
  value: /etc/warren/tls/client.crt
- name: {{ .prefix }}_TLS_CLIENT_KEY
  value: /etc/warren/tls/client.key
{{- end }}
{{- end }}
{{- end }}

{{- define "warren.tlsVolume" -}}
{{- if .existingSecret }}
- name: tls
  secret:
    secretName: {{ .existingSecret }}
    defaultMode: 0444
    items:
      {{- with .caKey }}
      - key: {{ . }}
        path: ca.pem
      {{- end }}
      {{- if .certKey }}
      - key: {{ .certKey }}
        path: client.crt
      - key: {{ .keyKey }}
        path: client.key
      {{- end }}
{{- end }}
{{- end }}

{{- define "warren.tlsMount" -}}
{{- if .existingSecret }}
- name: tls
  mountPath: /etc/warren/tls
  readOnly: true
{{- end }}
{{- end }}
