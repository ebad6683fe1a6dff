{{/* Names, labels and the checks that span several values. */}}

{{- define "swisper-ingest.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "swisper-ingest.fullname" -}}
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

{{- define "swisper-ingest.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "swisper-ingest.labels" -}}
helm.sh/chart: {{ include "swisper-ingest.chart" . }}
{{ include "swisper-ingest.selectorLabels" . }}
app.kubernetes.io/version: {{ include "swisper-ingest.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: swisper-studio
{{- end }}

{{- define "swisper-ingest.selectorLabels" -}}
app.kubernetes.io/name: {{ include "swisper-ingest.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ingest pods only: the migration Job's pod shares name and instance. */}}
{{- define "swisper-ingest.podSelectorLabels" -}}
{{ include "swisper-ingest.selectorLabels" . }}
app.kubernetes.io/component: ingest
{{- end }}

{{- define "swisper-ingest.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "swisper-ingest.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "swisper-ingest.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{- define "swisper-ingest.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "swisper-ingest.imageTag" .) }}
{{- end }}
{{- end }}

{{/* The Secret with the connection URLs (and, for KEDA, Redis address and password). */}}
{{- define "swisper-ingest.secretName" -}}
{{- default (include "swisper-ingest.fullname" .) .Values.connection.existingSecret }}
{{- end }}

{{/* The Secret's data when the chart creates it: the URLs, plus host:port,
     user and password taken from the Redis URL for KEDA's TriggerAuthentication. */}}
{{- define "swisper-ingest.secretData" -}}
{{- $c := .Values.connection -}}
{{ $c.redisUrlKey }}: {{ $c.redisUrl | b64enc | quote }}
{{ $c.databaseUrlKey }}: {{ $c.databaseUrl | b64enc | quote }}
{{- $u := urlParse $c.redisUrl }}
{{- $host := $u.host }}
{{- if not (regexMatch ":[0-9]+$" $host) }}{{ $host = printf "%s:6379" $host }}{{ end }}
REDIS_ADDRESS: {{ $host | b64enc | quote }}
{{- $userinfo := $u.userinfo | default "" }}
{{- if contains ":" $userinfo }}
{{- $parts := splitn ":" 2 $userinfo }}
REDIS_PASSWORD: {{ include "swisper-ingest.percentDecode" $parts._1 | b64enc | quote }}
{{- if $parts._0 }}
REDIS_USERNAME: {{ include "swisper-ingest.percentDecode" $parts._0 | b64enc | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Undoes the URL escaping of a user name or password (ASCII; %25 last). */}}
{{- define "swisper-ingest.percentDecode" -}}
{{- $s := . }}
{{- range $i := until 128 }}
{{- if ne $i 37 }}
{{- $s = replace (printf "%%%02X" $i) (printf "%c" $i) $s | replace (printf "%%%02x" $i) (printf "%c" $i) }}
{{- end }}
{{- end }}
{{- replace "%25" "%" $s }}
{{- end }}

{{/* "true" when the chart creates the Secret and the Redis URL has a password. */}}
{{- define "swisper-ingest.redisUrlHasPassword" -}}
{{- $u := urlParse (.Values.connection.redisUrl | default "") }}
{{- if contains ":" ($u.userinfo | default "") }}true{{ end }}
{{- end }}

{{/* The migration container, for the Job and for the init container.
     Takes (dict "root" $ "secretName" NAME): the hook Job reads its own Secret copy. */}}
{{- define "swisper-ingest.migrateContainer" -}}
{{- $root := .root }}
name: migrate
image: {{ include "swisper-ingest.image" $root }}
imagePullPolicy: {{ $root.Values.image.pullPolicy }}
args: ["migrate"]
env:
  - name: DATABASE_URL
    valueFrom:
      secretKeyRef:
        name: {{ .secretName }}
        key: {{ $root.Values.connection.databaseUrlKey }}
  - name: OBSERVABILITY_LOG_FORMAT
    value: {{ $root.Values.config.logFormat | quote }}
  - name: RUST_LOG
    value: {{ $root.Values.config.rustLog | quote }}
  {{- with $root.Values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
securityContext:
  {{- toYaml $root.Values.securityContext | nindent 2 }}
resources:
  {{- toYaml $root.Values.migrations.job.resources | nindent 2 }}
{{- with $root.Values.extraVolumeMounts }}
volumeMounts:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* preStop sleep needs the native sleep action (Kubernetes 1.30+): the image has no shell. */}}
{{- define "swisper-ingest.preStopSleep" -}}
{{- if and (gt (int .Values.lifecycle.preStopSleepSeconds) 0) (semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version) }}
{{- int .Values.lifecycle.preStopSleepSeconds }}
{{- else }}
{{- 0 }}
{{- end }}
{{- end }}

{{/* Checks that span several values (values.schema.json checks each value alone). */}}
{{- define "swisper-ingest.validate" -}}
{{- $v := .Values }}
{{- $drain := add (int $v.config.shutdownTimeoutSecs) (int $v.lifecycle.preStopSleepSeconds) 5 }}
{{- if lt (int $v.terminationGracePeriodSeconds) (int $drain) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be at least config.shutdownTimeoutSecs + lifecycle.preStopSleepSeconds + 5 (%d), or Kubernetes kills replicas before they flush and ack" (int $v.terminationGracePeriodSeconds) (int $drain)) }}
{{- end }}
{{- if le (int $v.config.claimIdleMs) (int $v.config.blockMs) }}
{{- fail (printf "config.claimIdleMs (%d) must exceed config.blockMs (%d), or live consumers' entries are claimed away" (int $v.config.claimIdleMs) (int $v.config.blockMs)) }}
{{- end }}
{{- if and $v.autoscaling.enabled $v.keda.enabled }}
{{- fail "autoscaling.enabled and keda.enabled are exclusive: KEDA creates its own HPA for the Deployment" }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas (%d) must not exceed autoscaling.maxReplicas (%d)" (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- end }}
{{- if and $v.autoscaling.enabled (not $v.autoscaling.lag.enabled) (not $v.autoscaling.targetCPUUtilizationPercentage) }}
{{- fail "autoscaling.enabled needs a metric: set autoscaling.targetCPUUtilizationPercentage or autoscaling.lag.enabled" }}
{{- end }}
{{- if and $v.keda.enabled (gt (int $v.keda.minReplicaCount) (int $v.keda.maxReplicaCount)) }}
{{- fail (printf "keda.minReplicaCount (%d) must not exceed keda.maxReplicaCount (%d)" (int $v.keda.minReplicaCount) (int $v.keda.maxReplicaCount)) }}
{{- end }}
{{- if and $v.connection.createSecret $v.connection.existingSecret }}
{{- fail "connection.createSecret and connection.existingSecret are exclusive: name your Secret, or let the chart create one" }}
{{- end }}
{{- if and $v.podDisruptionBudget.enabled (not $v.autoscaling.enabled) (not $v.keda.enabled) (not (kindIs "string" $v.podDisruptionBudget.minAvailable)) }}
{{- if ge (int $v.podDisruptionBudget.minAvailable) (int $v.replicaCount) }}
{{- fail (printf "podDisruptionBudget.minAvailable (%d) must be below replicaCount (%d), or node drains can never evict a replica" (int $v.podDisruptionBudget.minAvailable) (int $v.replicaCount)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Label matchers of the rules: "{<selector>}" or nothing. */}}
{{- define "swisper-ingest.ruleSelector" -}}
{{- with .Values.prometheusRule.selector }}{{ printf "{%s}" . }}{{ end }}
{{- end }}

{{/* An alert's labels: severity (or its override) and prometheusRule.alertLabels.
     Takes (list $ "AlertName" "default severity"). */}}
{{- define "swisper-ingest.alertLabels" -}}
{{- $root := index . 0 }}
{{- $name := index . 1 }}
{{- $r := $root.Values.prometheusRule -}}
labels:
  severity: {{ index ($r.severityOverrides | default dict) $name | default (index . 2) }}
  {{- with $r.alertLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
