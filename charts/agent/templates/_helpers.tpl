{{/*
Expand the name of the chart.
*/}}
{{- define "agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name, truncated at 63 characters (DNS label limit).
If the release name contains the chart name it is used as the full name.
*/}}
{{- define "agent.fullname" -}}
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

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "agent.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "agent.labels" -}}
helm.sh/chart: {{ include "agent.chart" . }}
{{ include "agent.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: moorage
{{- end }}

{{/*
Selector labels: exactly name + instance, immutable for the life of the release.
*/}}
{{- define "agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Create the name of the service account to use.
*/}}
{{- define "agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "agent.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The agent image reference: a digest pins it, else the tag (appVersion by default).
*/}}
{{- define "agent.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Name of the Secret holding the session URL and model API key: the user's, or the chart's.
*/}}
{{- define "agent.secretName" -}}
{{- default (include "agent.fullname" .) .Values.existingSecret.name }}
{{- end }}

{{/*
Name of the development Redis.
*/}}
{{- define "agent.redisName" -}}
{{- printf "%s-redis" (include "agent.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Session URL the chart puts in its own Secret: explicit, else the development Redis, else none.
*/}}
{{- define "agent.sessionUrl" -}}
{{- if .Values.session.url }}
{{- .Values.session.url }}
{{- else if .Values.redis.enabled }}
{{- printf "redis://%s:6379/0" (include "agent.redisName" .) }}
{{- end }}
{{- end }}

{{/*
Key of the session URL in the Secret, or empty when sessions stay in memory.
*/}}
{{- define "agent.sessionUrlKey" -}}
{{- if .Values.existingSecret.name }}
{{- .Values.existingSecret.sessionUrlKey }}
{{- else if include "agent.sessionUrl" . }}
{{- "session-url" }}
{{- end }}
{{- end }}

{{/*
Key of the model API key in the Secret, or empty when the model needs none.
*/}}
{{- define "agent.modelApiKeyKey" -}}
{{- if .Values.existingSecret.name }}
{{- .Values.existingSecret.modelApiKeyKey }}
{{- else if .Values.model.apiKey }}
{{- "model-api-key" }}
{{- end }}
{{- end }}

{{/*
True (non-empty) when the chart itself must create a Secret.
*/}}
{{- define "agent.createSecret" -}}
{{- if and (not .Values.existingSecret.name) (or (include "agent.sessionUrl" .) .Values.model.apiKey) }}true{{- end }}
{{- end }}

{{/*
The pod contract shared with the operator (files/pod-contract.yaml: probes, hardening, files,
port, defaults), as YAML text: `include "agent.contract" . | fromYaml`.
*/}}
{{- define "agent.contract" -}}
{{- $text := .Files.Get "files/pod-contract.yaml" }}
{{- if hasKey (fromYaml $text) "Error" }}
{{- fail "files/pod-contract.yaml is not valid YAML" }}
{{- end }}
{{- $text }}
{{- end }}

{{/*
The items of the chart's (or the existing) Secret mounted as files under agent.secretDir.
*/}}
{{- define "agent.secretItems" -}}
{{- $files := (include "agent.contract" . | fromYaml).secrets.files }}
{{- $sessionUrlKey := include "agent.sessionUrlKey" . }}
{{- $apiKeyKey := include "agent.modelApiKeyKey" . }}
{{- if $sessionUrlKey }}
- key: {{ $sessionUrlKey }}
  path: {{ $files.sessionUrl.path }}
{{- end }}
{{- if $apiKeyKey }}
- key: {{ $apiKeyKey }}
  path: {{ $files.modelApiKey.path }}
{{- end }}
{{- end }}

{{/*
Where the Secret's keys are mounted as files.
*/}}
{{- define "agent.secretDir" -}}
{{- (include "agent.contract" . | fromYaml).secrets.dir }}
{{- end }}

{{/*
Where the session store's TLS files (session.tls) are mounted.
*/}}
{{- define "agent.sessionTlsDir" -}}
{{- (include "agent.contract" . | fromYaml).sessionTls.dir }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the preStop drain, then the service's shutdown timeout, then margin.
*/}}
{{- define "agent.gracePeriod" -}}
{{- $t := .Values.termination }}
{{- add $t.drainDelaySeconds $t.shutdownTimeoutSeconds $t.marginSeconds }}
{{- end }}

{{/*
What the service accepts as a session URL (or empty): a host, a port from 1 to 65535 if any, and
no '@' after the host part. Checked here, not in values.schema.json, whose error would print the
URL with its password.
*/}}
{{- /* # BEGIN GENERATED by `make schemas` from agent_service.config; do not edit by hand. */}}
{{- define "agent.sessionUrlPattern" -}}
^(?:rediss?://(?:[^/?#]*@)?(?:[^/?#@:\[\]]+|\[[0-9A-Fa-f:.]+\])(?::(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])?)?(?:[/?#][^@]*)?|rediss?\+sentinel://(?:[^/?#]*@)?(?:[^/?#@:\[\],]+|\[[0-9A-Fa-f:.]+\])(?::(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])?)?(?:,(?:[^/?#@:\[\],]+|\[[0-9A-Fa-f:.]+\])(?::(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])?)?)*/[^/?#@]+(?:/[0-9]*)?/?(?:[?#][^@]*)?|rediss?\+cluster://(?:[^/?#]*@)?(?:[^/?#@:\[\],]+|\[[0-9A-Fa-f:.]+\])(?::(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])?)?(?:,(?:[^/?#@:\[\],]+|\[[0-9A-Fa-f:.]+\])(?::(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])?)?)*/?(?:#[^@]*)?)?$
{{- end }}
{{- /* # END GENERATED */}}

{{/*
Checks across values that a JSON schema cannot express; a failed one stops the render.
*/}}
{{- define "agent.validate" -}}
{{- $a := .Values.autoscaling }}
{{- if and $a.enabled (gt (int $a.minReplicas) (int $a.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas (%d) must not exceed autoscaling.maxReplicas (%d)" (int $a.minReplicas) (int $a.maxReplicas)) }}
{{- end }}
{{- $multi := or $a.enabled (gt (int .Values.replicaCount) 1) (gt (int .Values.server.workers) 1) }}
{{- if and $multi (not (include "agent.sessionUrlKey" .)) }}
{{- fail "sessions would live in memory:// of one process but more than one will serve: set session.url (external Redis, the production path), existingSecret.name with existingSecret.sessionUrlKey, or redis.enabled=true (development only)" }}
{{- end }}
{{- if and .Values.existingSecret.name (or .Values.session.url .Values.model.apiKey) }}
{{- fail "existingSecret.name is set, so session.url and model.apiKey must be empty: put them in that Secret" }}
{{- end }}
{{- if not (regexMatch (include "agent.sessionUrlPattern" .) .Values.session.url) }}
{{- fail "session.url must be a redis:// or rediss:// URL (or redis[s]+sentinel://h1,h2/<master>, redis[s]+cluster://h1,h2) naming its hosts, with a port from 1 to 65535 if any, and '/', '?' and '#' percent-encoded in its password (the value is not shown: it may hold a password)" }}
{{- end }}
{{- $tls := .Values.session.tls }}
{{- $urlFromSecret := and .Values.existingSecret.name .Values.existingSecret.sessionUrlKey }}
{{- if and (or $tls.caSecret $tls.clientCertSecret) (not $urlFromSecret) (not (hasPrefix "rediss" (include "agent.sessionUrl" .))) }}
{{- fail "session.tls applies only to a rediss… session URL: set session.url to a rediss:// (or rediss+sentinel://, rediss+cluster://) URL, or existingSecret.name with existingSecret.sessionUrlKey" }}
{{- end }}
{{- /* The service's own cross-field checks, so a bad value fails the install, not the pod. */}}
{{- if gt (float64 .Values.model.timeoutSeconds) (float64 .Values.server.requestTimeoutSeconds) }}
{{- fail (printf "model.timeoutSeconds (%v) must not exceed server.requestTimeoutSeconds (%v): one model call cannot outlast the turn" .Values.model.timeoutSeconds .Values.server.requestTimeoutSeconds) }}
{{- end }}
{{- if lt (float64 .Values.termination.shutdownTimeoutSeconds) (float64 .Values.server.requestTimeoutSeconds) }}
{{- fail (printf "termination.shutdownTimeoutSeconds (%v) must be at least server.requestTimeoutSeconds (%v): a turn still running when its pod is removed (scale-down, rollout) would be cut" .Values.termination.shutdownTimeoutSeconds .Values.server.requestTimeoutSeconds) }}
{{- end }}
{{- if and (hasPrefix "openai:" .Values.model.name) (not (include "agent.modelApiKeyKey" .)) }}
{{- fail (printf "model.name is %s, which needs an API key: set model.apiKey, or existingSecret.name with existingSecret.modelApiKeyKey" .Values.model.name) }}
{{- end }}
{{- include "agent.validatePod" . }}
{{- include "agent.validateAgent" . }}
{{- end }}

{{/*
The agent's prompt, tools and context window (the operator refuses the same in its CRD and spec
validation; the tools' names and the bounds are values.schema.json's).
*/}}
{{- define "agent.validateAgent" -}}
{{- $agent := .Values.agent }}
{{- if and $agent.systemPrompt $agent.systemPromptConfigMap.name }}
{{- fail "agent: set systemPrompt or systemPromptConfigMap.name, not both" }}
{{- end }}
{{- if and $agent.systemPrompt (not (trim $agent.systemPrompt)) }}
{{- fail "agent.systemPrompt must not be only whitespace (leave it empty for the service's built-in prompt)" }}
{{- end }}
{{- range $name := list "AGENT_SYSTEM_PROMPT" "AGENT_SYSTEM_PROMPT_FILE" }}
{{- if hasKey $.Values.extraEnv $name }}
{{- fail (printf "extraEnv may not set %s: use agent.systemPrompt or agent.systemPromptConfigMap" $name) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The ConfigMap holding the system prompt (its name), or empty when the service's default is used.
*/}}
{{- define "agent.systemPromptConfigMap" -}}
{{- if .Values.agent.systemPrompt }}
{{- include "agent.fullname" . }}
{{- else }}
{{- .Values.agent.systemPromptConfigMap.name }}
{{- end }}
{{- end }}

{{/*
The user's labels, annotations, volumes and mounts never take the chart's or the pod contract's
own (the operator refuses the same in its CRD and spec validation).
*/}}
{{- define "agent.validatePod" -}}
{{- $own := include "agent.labels" . | fromYaml }}
{{- $selector := keys (include "agent.selectorLabels" . | fromYaml) | sortAlpha | join " and " }}
{{- range $where, $labels := dict "podLabels" .Values.podLabels "service.labels" .Values.service.labels }}
{{- range $key, $_ := $labels }}
{{- if or (hasKey $own $key) (eq $key "pod-template-hash") (hasPrefix "moorage.dev/" $key) }}
{{- fail (printf "%s may not set %s: the chart's own labels (%s), pod-template-hash and moorage.dev/* keys are refused; %s select the pods" $where $key (keys $own | sortAlpha | join ", ") $selector) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $where, $annotations := dict "podAnnotations" .Values.podAnnotations "service.annotations" .Values.service.annotations }}
{{- range $key, $_ := $annotations }}
{{- if or (hasPrefix "checksum/" $key) (hasPrefix "moorage.dev/" $key) }}
{{- fail (printf "%s may not set %s: checksum/* and moorage.dev/* annotations are the chart's and the operator's own" $where $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- $c := include "agent.contract" . | fromYaml }}
{{- $names := list $c.tmp.volume $c.secrets.volume $c.sessionTls.volume $c.systemPrompt.volume }}
{{- $paths := list $c.tmp.mountPath $c.secrets.dir $c.sessionTls.dir $c.systemPrompt.dir }}
{{- $volumes := list }}
{{- range .Values.extraVolumes }}
{{- if has .name $names }}
{{- fail (printf "extraVolumes: the name %s is the pod contract's own volume (%s): choose another" .name (join ", " $names)) }}
{{- end }}
{{- if has .name $volumes }}
{{- fail (printf "extraVolumes: the name %s is used twice" .name) }}
{{- end }}
{{- $volumes = append $volumes .name }}
{{- end }}
{{- $mounted := list }}
{{- range .Values.extraVolumeMounts }}
{{- if not (has .name $volumes) }}
{{- fail (printf "extraVolumeMounts: %s is not a volume of extraVolumes" .name) }}
{{- end }}
{{- $path := .mountPath }}
{{- if regexMatch "/\\.\\.?(/|$)" $path }}
{{- fail (printf "extraVolumeMounts: mountPath %s may not contain . or .. segments" $path) }}
{{- end }}
{{- range $paths }}
{{- if or (eq $path .) (hasPrefix (printf "%s/" .) $path) (hasPrefix (printf "%s/" $path) .) }}
{{- fail (printf "extraVolumeMounts: mountPath %s collides with the pod contract's mount %s (contract mounts: %s; not at, above or under them)" $path . (join ", " $paths)) }}
{{- end }}
{{- end }}
{{- if has $path $mounted }}
{{- fail (printf "extraVolumeMounts: mountPath %s is used twice" $path) }}
{{- end }}
{{- $mounted = append $mounted $path }}
{{- end }}
{{- end }}
