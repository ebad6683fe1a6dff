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

{{/* Labels of every resource: the chart's own, then commonLabels (whose
     keys the schema keeps apart from the chart's). */}}
{{- define "swisper-ingest.labels" -}}
{{ include "swisper-ingest.chartLabels" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "swisper-ingest.chartLabels" -}}
helm.sh/chart: {{ include "swisper-ingest.chart" . }}
{{ include "swisper-ingest.selectorLabels" . }}
app.kubernetes.io/version: {{ include "swisper-ingest.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: swisper-studio
{{- end }}

{{/* Labels of a resource with labels of its own (serviceMonitor.labels ...):
     the chart's, then those merged over commonLabels, so that a key in both
     is written once. Takes (dict "root" $ "extra" DICT). */}}
{{- define "swisper-ingest.labelsWith" -}}
{{ include "swisper-ingest.chartLabels" .root }}
{{- with merge (deepCopy (.extra | default dict)) (deepCopy (.root.Values.commonLabels | default dict)) }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of a pod (the service's, the migration Job's, the helm test
     pod's): the chart's and the component, then the pod's own labels
     (e.g. migrations.job.podLabels) over podLabels over commonLabels.
     Takes (dict "root" $ "component" NAME "own" DICT). */}}
{{- define "swisper-ingest.podLabels" -}}
{{- $root := .root -}}
{{ include "swisper-ingest.chartLabels" $root }}
app.kubernetes.io/component: {{ .component }}
{{- $extra := merge (deepCopy (.own | default dict)) (deepCopy ($root.Values.podLabels | default dict)) (deepCopy ($root.Values.commonLabels | default dict)) }}
{{- range $key, $_ := include "swisper-ingest.chartLabels" $root | fromYaml }}
{{- $_ := unset $extra $key }}
{{- end }}
{{- $_ := unset $extra "app.kubernetes.io/component" }}
{{- with $extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Annotations of a pod: its own (e.g. migrations.job.podAnnotations) over
     podAnnotations, so that a Job can turn off a sidecar injector that the
     service's pods use. Takes (dict "root" $ "own" DICT); may be empty. */}}
{{- define "swisper-ingest.podAnnotations" -}}
{{- with merge (deepCopy (.own | default dict)) (deepCopy (.root.Values.podAnnotations | default dict)) }}
{{- toYaml . }}
{{- end }}
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

{{/* ------------------------------------------------------------------
     Connections: the env entries, volumes and mounts that every container
     running the binary shares (service, migration, helm test), written once.
     Way A: the URL whole from a Secret key. Way B (connection.<x>.host set):
     the URL assembled from values, the password alone from a Secret key.
     ------------------------------------------------------------------ */}}

{{/* Where the TLS files of "redis" or "postgres" are mounted. */}}
{{- define "swisper-ingest.tlsDir" -}}
/etc/swisper-ingest/tls/{{ . }}
{{- end }}

{{/* Where connection.credentialsFromFiles mounts the credentials. */}}
{{- define "swisper-ingest.credentialsDir" -}}
/var/run/secrets/swisper-ingest
{{- end }}

{{/* The projected sources of the credentials volume (connection.credentialsFromFiles):
     Redis user name and password, PostgreSQL password, from the Secret keys
     of way B; empty when there is nothing to mount. Takes (dict "root" $
     "redis" BOOL): the migration needs PostgreSQL's only. */}}
{{- define "swisper-ingest.credentialSources" -}}
{{- $root := .root }}
{{- $c := $root.Values.connection }}
{{- if $c.credentialsFromFiles }}
{{- $r := $c.redis }}
{{- if and .redis $r.host (or $r.passwordKey $r.usernameKey) }}
- secret:
    name: {{ include "swisper-ingest.passwordSecret" (dict "root" $root "c" $r) }}
    items:
      {{- with $r.passwordKey }}
      - key: {{ . }}
        path: redis-password
      {{- end }}
      {{- with $r.usernameKey }}
      - key: {{ . }}
        path: redis-username
      {{- end }}
{{- end }}
{{- $p := $c.postgres }}
{{- if and $p.host $p.passwordKey }}
- secret:
    name: {{ include "swisper-ingest.passwordSecret" (dict "root" $root "c" $p) }}
    items:
      - key: {{ $p.passwordKey }}
        path: postgres-password
{{- end }}
{{- end }}
{{- end }}

{{/* "true" when connection.<name>.tls (dict "tls" T) has files to mount. */}}
{{- define "swisper-ingest.hasTlsFiles" -}}
{{- if or .tls.ca.secretName .tls.ca.configMapName .tls.clientCert.secretName }}true{{ end }}
{{- end }}

{{/* The Secret with the password of connection.redis or .postgres in way B.
     Takes (dict "root" $ "c" connection.<name>). */}}
{{- define "swisper-ingest.passwordSecret" -}}
{{- .c.passwordSecret | default .root.Values.connection.existingSecret }}
{{- end }}

{{/* A host for a URL: IPv6 addresses in brackets. */}}
{{- define "swisper-ingest.urlHost" -}}
{{- if and (contains ":" .) (not (hasPrefix "[" .)) }}[{{ . }}]{{ else }}{{ . }}{{ end }}
{{- end }}

{{/* Percent-encoding of a URL user name or path segment (url.QueryEscape,
     with spaces as %20 rather than "+"). */}}
{{- define "swisper-ingest.urlEscape" -}}
{{- urlquery . | replace "+" "%20" }}
{{- end }}

{{/* The assembled OBSERVABILITY_REDIS_URL (way B): no credentials in it, they
     come as OBSERVABILITY_REDIS_USERNAME and _PASSWORD. */}}
{{- define "swisper-ingest.redisUrl" -}}
{{- $r := .Values.connection.redis -}}
{{ ternary "rediss" "redis" $r.tls.enabled }}://{{ include "swisper-ingest.urlHost" $r.host }}:{{ int $r.port }}/{{ int $r.database }}
{{- end }}

{{/* The assembled DATABASE_URL (way B), libpq style: sslmode and the paths of
     the mounted TLS files; the password comes as PGPASSWORD. */}}
{{- define "swisper-ingest.databaseUrl" -}}
{{- $p := .Values.connection.postgres -}}
{{- $dir := include "swisper-ingest.tlsDir" "postgres" -}}
{{- $params := list (printf "sslmode=%s" $p.sslmode) -}}
{{- if or $p.tls.ca.secretName $p.tls.ca.configMapName }}
{{- $params = append $params (printf "sslrootcert=%s/ca.crt" $dir) }}
{{- end }}
{{- if $p.tls.clientCert.secretName }}
{{- $params = append $params (printf "sslcert=%s/tls.crt" $dir) }}
{{- $params = append $params (printf "sslkey=%s/tls.key" $dir) }}
{{- end -}}
postgres://{{ include "swisper-ingest.urlEscape" $p.username }}@{{ include "swisper-ingest.urlHost" $p.host }}:{{ int $p.port }}/{{ include "swisper-ingest.urlEscape" $p.database }}?{{ join "&" $params }}
{{- end }}

{{/* Env entries of the Redis connection. Takes (dict "root" $ "secretName" NAME),
     NAME being the Secret with the URL in way A. */}}
{{- define "swisper-ingest.redisEnv" -}}
{{- $root := .root }}
{{- $r := $root.Values.connection.redis }}
{{- $dir := include "swisper-ingest.tlsDir" "redis" }}
{{- if $r.host }}
- name: OBSERVABILITY_REDIS_URL
  value: {{ include "swisper-ingest.redisUrl" $root | quote }}
{{- $files := $root.Values.connection.credentialsFromFiles }}
{{- $credDir := include "swisper-ingest.credentialsDir" . }}
{{- if and $r.usernameKey $files }}
# Re-read at every connection: a rotated Secret is used without a restart.
- name: OBSERVABILITY_REDIS_USERNAME_FILE
  value: {{ printf "%s/redis-username" $credDir | quote }}
{{- else if $r.usernameKey }}
- name: OBSERVABILITY_REDIS_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ include "swisper-ingest.passwordSecret" (dict "root" $root "c" $r) }}
      key: {{ $r.usernameKey }}
{{- else if $r.username }}
- name: OBSERVABILITY_REDIS_USERNAME
  value: {{ $r.username | quote }}
{{- end }}
{{- if and $r.passwordKey $files }}
- name: OBSERVABILITY_REDIS_PASSWORD_FILE
  value: {{ printf "%s/redis-password" $credDir | quote }}
{{- else if $r.passwordKey }}
- name: OBSERVABILITY_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "swisper-ingest.passwordSecret" (dict "root" $root "c" $r) }}
      key: {{ $r.passwordKey }}
{{- end }}
{{- else }}
- name: OBSERVABILITY_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ $root.Values.connection.redisUrlKey }}
{{- end }}
{{- if or $r.tls.ca.secretName $r.tls.ca.configMapName }}
- name: OBSERVABILITY_REDIS_CA_FILE
  value: {{ printf "%s/ca.crt" $dir | quote }}
{{- end }}
{{- if $r.tls.clientCert.secretName }}
- name: OBSERVABILITY_REDIS_CLIENT_CERT_FILE
  value: {{ printf "%s/tls.crt" $dir | quote }}
- name: OBSERVABILITY_REDIS_CLIENT_KEY_FILE
  value: {{ printf "%s/tls.key" $dir | quote }}
{{- end }}
{{- if $r.tls.insecureSkipVerify }}
# DANGEROUS: no verification of the Redis server's certificate.
- name: OBSERVABILITY_REDIS_TLS_INSECURE
  value: "true"
{{- end }}
{{- end }}

{{/* Env entries of the PostgreSQL connection. Takes (dict "root" $ "secretName" NAME). */}}
{{- define "swisper-ingest.postgresEnv" -}}
{{- $root := .root }}
{{- $p := $root.Values.connection.postgres }}
{{- if $p.host }}
- name: DATABASE_URL
  value: {{ include "swisper-ingest.databaseUrl" $root | quote }}
{{- if and $p.passwordKey $root.Values.connection.credentialsFromFiles }}
# Re-read at every connection: a rotated Secret is used without a restart.
- name: OBSERVABILITY_DATABASE_PASSWORD_FILE
  value: {{ printf "%s/postgres-password" (include "swisper-ingest.credentialsDir" .) | quote }}
{{- else if $p.passwordKey }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "swisper-ingest.passwordSecret" (dict "root" $root "c" $p) }}
      key: {{ $p.passwordKey }}
{{- end }}
{{- else }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ $root.Values.connection.databaseUrlKey }}
{{- end }}
{{- end }}

{{/* The env of a container that runs the binary: connections (both, or only
     PostgreSQL for the migration), then extraEnv. Takes (dict "root" $
     "secretName" NAME "redis" BOOL). */}}
{{- define "swisper-ingest.connectionEnv" -}}
{{- if .redis }}
{{- include "swisper-ingest.redisEnv" . }}
{{- end }}
{{- include "swisper-ingest.postgresEnv" . }}
{{- end }}

{{/* envFrom of a container that runs the binary: the settings ConfigMap
     (optional) and extraEnvFrom. Takes (dict "root" $ "configMap" BOOL). */}}
{{- define "swisper-ingest.envFrom" -}}
{{- if .configMap }}
- configMapRef:
    name: {{ include "swisper-ingest.fullname" .root }}
{{- end }}
{{- with .root.Values.extraEnvFrom }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* One projected volume per connection with TLS files: the CA as ca.crt,
     the client certificate as tls.crt and tls.key, read-only, readable by
     the owner and the pod's fsGroup only; then extraVolumes. Takes (dict
     "root" $ "redis" BOOL): the migration Job needs PostgreSQL's only. */}}
{{- define "swisper-ingest.tlsVolumes" -}}
{{- $root := .root }}
{{- $names := ternary (list "redis" "postgres") (list "postgres") (.redis | default false) }}
{{- range $name := $names }}
{{- $t := (index $root.Values.connection $name).tls }}
{{- if include "swisper-ingest.hasTlsFiles" (dict "tls" $t) }}
- name: {{ $name }}-tls
  projected:
    # 0440: owner and the pod's fsGroup (the service's group 65532) read.
    defaultMode: 0440
    sources:
      {{- if $t.ca.secretName }}
      - secret:
          name: {{ $t.ca.secretName }}
          items:
            - key: {{ $t.ca.key }}
              path: ca.crt
      {{- else if $t.ca.configMapName }}
      - configMap:
          name: {{ $t.ca.configMapName }}
          items:
            - key: {{ $t.ca.key }}
              path: ca.crt
      {{- end }}
      {{- with $t.clientCert.secretName }}
      - secret:
          name: {{ . }}
          items:
            - key: {{ $t.clientCert.certKey }}
              path: tls.crt
            - key: {{ $t.clientCert.keyKey }}
              path: tls.key
      {{- end }}
{{- end }}
{{- end }}
{{- with include "swisper-ingest.credentialSources" . | trim }}
- name: credentials
  projected:
    # 0440: owner and the pod's fsGroup read. No subPath: the kubelet
    # updates the files when the Secret changes.
    defaultMode: 0440
    sources:
      {{- . | nindent 6 }}
{{- end }}
{{- with $root.Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The mounts of those volumes, and extraVolumeMounts. Takes (dict "root" $
     "redis" BOOL): the migration mounts only PostgreSQL's. */}}
{{- define "swisper-ingest.tlsVolumeMounts" -}}
{{- $root := .root }}
{{- $names := ternary (list "redis" "postgres") (list "postgres") (.redis | default false) }}
{{- range $name := $names }}
{{- if include "swisper-ingest.hasTlsFiles" (dict "tls" (index $root.Values.connection $name).tls) }}
- name: {{ $name }}-tls
  mountPath: {{ include "swisper-ingest.tlsDir" $name }}
  readOnly: true
{{- end }}
{{- end }}
{{- if include "swisper-ingest.credentialSources" . | trim }}
- name: credentials
  mountPath: {{ include "swisper-ingest.credentialsDir" . }}
  readOnly: true
{{- end }}
{{- with $root.Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The migration container, for the Job and for the init container. It
     needs PostgreSQL only. Takes (dict "root" $ "secretName" NAME): the hook
     Job reads its own Secret copy. */}}
{{- define "swisper-ingest.migrateContainer" -}}
{{- $root := .root }}
{{- $mounts := include "swisper-ingest.tlsVolumeMounts" (dict "root" $root "redis" false) | trim }}
{{- $envFrom := include "swisper-ingest.envFrom" (dict "root" $root "configMap" false) | trim }}
name: migrate
image: {{ include "swisper-ingest.image" $root }}
imagePullPolicy: {{ $root.Values.image.pullPolicy }}
args: ["migrate"]
{{- with $envFrom }}
envFrom:
  {{- . | nindent 2 }}
{{- end }}
env:
  {{- include "swisper-ingest.connectionEnv" (dict "root" $root "secretName" .secretName "redis" false) | trim | nindent 2 }}
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
{{- with $mounts }}
volumeMounts:
  {{- . | nindent 2 }}
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
{{- if gt (mul (int $v.config.holdStartsMs) 2) (int $v.config.claimIdleMs) }}
{{- fail (printf "config.holdStartsMs (%d) must be at most half of config.claimIdleMs (%d), or held starts are claimed from their own writer" (int $v.config.holdStartsMs) (int $v.config.claimIdleMs)) }}
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
{{- range $name := list "redis" "postgres" }}
{{- $c := index $v.connection $name }}
{{- if and $c.host $c.passwordKey (not (include "swisper-ingest.passwordSecret" (dict "root" $ "c" $c))) }}
{{- fail (printf "connection.%s.passwordKey (%s) names no Secret: set connection.%s.passwordSecret or connection.existingSecret to the Secret that holds the password, or passwordKey: \"\" when the server needs none" $name $c.passwordKey $name) }}
{{- end }}
{{- end }}
{{- $r := $v.connection.redis }}
{{- if and $r.host $r.usernameKey (not (include "swisper-ingest.passwordSecret" (dict "root" $ "c" $r))) }}
{{- fail (printf "connection.redis.usernameKey (%s) names no Secret: set connection.redis.passwordSecret or connection.existingSecret to the Secret that holds the user name" $r.usernameKey) }}
{{- end }}
{{- if and $r.usernameKey $r.username }}
{{- fail "connection.redis.username and connection.redis.usernameKey are exclusive: the user name is a value, or a key of the password's Secret" }}
{{- end }}
{{- if and $v.connection.credentialsFromFiles (not (include "swisper-ingest.credentialSources" (dict "root" $ "redis" true) | trim)) }}
{{- fail "connection.credentialsFromFiles mounts the passwords of way B (connection.redis.host or connection.postgres.host, with passwordKey set): there is none here. With URLs from a Secret (way A) the password is in the URL; turn credentialsFromFiles off" }}
{{- end }}
{{- if and $v.connection.createSecret $v.connection.redis.tls.enabled (hasPrefix "redis://" $v.connection.redisUrl) }}
{{- fail "connection.redis.tls.enabled is true but connection.redisUrl is redis:// (plaintext): use rediss://, or turn tls.enabled off" }}
{{- end }}
{{- range $name := list "redis" "postgres" }}
{{- $c := index $v.connection $name }}
{{- $np := index $v.networkPolicy $name }}
{{- if and $v.networkPolicy.enabled $c.host (ne (int $c.port) (int $np.port)) }}
{{- fail (printf "networkPolicy.%s.port (%d) differs from connection.%s.port (%d): the NetworkPolicy would block the pods' own connection" $name (int $np.port) $name (int $c.port)) }}
{{- end }}
{{- end }}
{{- if and $v.keda.enabled $v.connection.redis.host $v.keda.redis.address }}
{{- fail "keda.redis.address and connection.redis.host are exclusive: with host set, KEDA connects to connection.redis.host:port, as the service does" }}
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

{{/*
The container's memory limit, from which the service sizes its memory budget
(3/8 of it, unless config.extra.OBSERVABILITY_MEMORY_BUDGET_BYTES sets it).
Written once for the Deployment and the helm test pod, whose env must match.
*/}}
{{- define "swisper-ingest.memoryLimitEnv" -}}
{{- if dig "limits" "memory" "" .Values.resources -}}
- name: OBSERVABILITY_MEMORY_LIMIT_BYTES
  valueFrom:
    resourceFieldRef:
      resource: limits.memory
{{- end }}
{{- end }}
