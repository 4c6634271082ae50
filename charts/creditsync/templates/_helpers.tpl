{{/* Names, labels and the secret and plan rules shared by the templates. */}}

{{- define "creditsync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The resource name prefix: the release name, plus the chart's unless it contains it. */}}
{{- define "creditsync.fullname" -}}
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

{{- define "creditsync.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "creditsync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "creditsync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "creditsync.labels" -}}
helm.sh/chart: {{ include "creditsync.chart" . }}
{{ include "creditsync.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: creditsync
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The pods of the Deployment (operator + API), distinct from the Job's and the test's. */}}
{{- define "creditsync.serverSelectorLabels" -}}
{{ include "creditsync.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "creditsync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "creditsync.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name the existing ServiceAccount to run as (serviceAccount.create is false)" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "creditsync.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The chart's own Secret (holds the entries given as values). */}}
{{- define "creditsync.secretName" -}}
{{- include "creditsync.fullname" . }}
{{- end }}

{{- define "creditsync.requiredSecrets" -}}
databaseUrl wixPublicKey appSecret adminToken
{{- end }}

{{/*
Where secret entry `.name` comes from: a dict {secret, key, optional}, as JSON, or "{}" when
it is an optional entry that nobody set. A required entry that nobody set fails the render.
Order: the entry's existingSecret, its value (the chart's Secret), secrets.existingSecret.
*/}}
{{- define "creditsync.secretSource" -}}
{{- $root := .root }}
{{- $entry := index $root.Values.secrets .name }}
{{- $required := has .name (splitList " " (include "creditsync.requiredSecrets" $root)) }}
{{- if $entry.existingSecret }}
{{- dict "secret" $entry.existingSecret "key" $entry.key "optional" (not $required) | toJson }}
{{- else if $entry.value }}
{{- dict "secret" (include "creditsync.secretName" $root) "key" $entry.key "optional" false | toJson }}
{{- else if $root.Values.secrets.existingSecret }}
{{- dict "secret" $root.Values.secrets.existingSecret "key" $entry.key "optional" (not $required) | toJson }}
{{- else if $required }}
{{- fail (printf "secrets.%s: set secrets.%s.value, or name a Secret holding key %q in secrets.%s.existingSecret or secrets.existingSecret" .name .name $entry.key .name) }}
{{- else }}
{{- "{}" }}
{{- end }}
{{- end }}

{{/*
Env entries read from secret entries: `.envs` maps each variable to its secret entry
(`CREDITSYNC_DATABASE_URL: databaseUrl`); an unset optional entry gives no variable.
*/}}
{{- define "creditsync.secretEnv" -}}
{{- $root := .root }}
{{- range $env, $name := .envs }}
{{- $src := include "creditsync.secretSource" (dict "root" $root "name" $name) | fromJson }}
{{- if $src.secret }}
- name: {{ $env }}
  valueFrom:
    secretKeyRef:
      name: {{ $src.secret }}
      key: {{ $src.key }}
      {{- if $src.optional }}
      optional: true
      {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The chart's Secret's data. The pods' checksum/secret annotation hashes this, not the whole
Secret, whose labels change with every chart version.
*/}}
{{- define "creditsync.ownSecretData" -}}
{{- range $name, $entry := .Values.secrets }}
{{- if and (kindIs "map" $entry) $entry.value (not $entry.existingSecret) }}
{{ $entry.key }}: {{ $entry.value | b64enc | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* True ("true") when at least one secret entry is given as a value. */}}
{{- define "creditsync.ownSecret" -}}
{{- range $name, $entry := .Values.secrets }}
{{- if and (kindIs "map" $entry) $entry.value (not $entry.existingSecret) }}true{{ end }}
{{- end }}
{{- end }}

{{/* Settings both containers read, so that the API converges like the operator. */}}
{{- define "creditsync.policyEnv" -}}
- name: CREDITSYNC_USAGE_ON_PLAN_CHANGE
  value: {{ .Values.creditSync.usageOnPlanChange | quote }}
- name: CREDITSYNC_EXPIRY_GRACE_PERIOD
  value: {{ .Values.creditSync.expiryGracePeriod | quote }}
- name: CREDITSYNC_LOW_CREDIT_THRESHOLDS
  value: {{ .Values.creditSync.lowCreditThresholds | toString | quote }}
- name: CREDITSYNC_BATCH_SIZE
  value: {{ .Values.creditSync.batchSize | quote }}
{{- end }}

{{/*
The marketplace source's settings (none while marketplace.appId is empty: the source is off).
`.audit`: the container that audits (the operator) also gets the audit interval; its
CreditSync's spec.marketplaceAudit.interval says the same.
*/}}
{{- define "creditsync.marketplaceEnv" -}}
{{- with .root.Values.marketplace }}
{{- if .appId }}
- name: CREDITSYNC_WIX_APP_ID
  value: {{ .appId | quote }}
- name: CREDITSYNC_WIX_API_URL
  value: {{ .apiUrl | quote }}
- name: CREDITSYNC_MARKETPLACE_RATE
  value: {{ .rate | toString | quote }}
{{- if $.audit }}
- name: CREDITSYNC_MARKETPLACE_AUDIT_INTERVAL
  value: {{ .auditInterval | toString | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The plan catalog file `creditsync db upgrade` seeds an empty catalog from. */}}
{{- define "creditsync.plansFile" -}}
plans:
{{- range .Values.plans }}
  - id: {{ .id | quote }}
    monthlyCredits: {{ .monthlyCredits }}
    {{- with .displayName }}
    displayName: {{ . | quote }}
    {{- end }}
    {{- if .default }}
    default: true
    {{- end }}
    {{- with .aliases }}
    aliases: {{ toJson . }}
    {{- end }}
{{- end }}
{{- end }}

{{/* Rules the schema cannot say: exactly one default plan, unique ids and aliases. */}}
{{- define "creditsync.validatePlans" -}}
{{- $ids := dict }}
{{- $defaults := list }}
{{- range .Values.plans }}
{{- if hasKey $ids .id }}
{{- fail (printf "plans: plan id %q is listed twice" .id) }}
{{- end }}
{{- $_ := set $ids .id true }}
{{- if .default }}{{ $defaults = append $defaults .id }}{{ end }}
{{- end }}
{{- if ne (len $defaults) 1 }}
{{- fail (printf "plans: exactly one plan needs default: true (found %d: %s)" (len $defaults) (join ", " $defaults)) }}
{{- end }}
{{- $aliases := dict }}
{{- range .Values.plans }}
{{- $plan := .id }}
{{- range (default list .aliases) }}
{{- if or (hasKey $aliases .) (hasKey $ids .) }}
{{- fail (printf "plans: alias %q of plan %q is already a plan id or another alias" . $plan) }}
{{- end }}
{{- $_ := set $aliases . $plan }}
{{- end }}
{{- end }}
{{- end }}

{{/* A Helm hook's annotations (the migration Job and what it reads). */}}
{{- define "creditsync.migrationHook" -}}
helm.sh/hook: pre-install,pre-upgrade
helm.sh/hook-weight: {{ . | quote }}
helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
{{- end }}

{{/* The PromQL selector of this release's API metrics (the ServiceMonitor's job). */}}
{{- define "creditsync.metricsSelector" -}}
job="{{ include "creditsync.fullname" . }}", namespace="{{ .Release.Namespace }}"
{{- end }}

{{/*
The operator's settings of events to the app (none while appWebhooks.url is empty): the URL,
and the secret that signs them, which must be set with it.
*/}}
{{- define "creditsync.appWebhookEnv" -}}
{{- if .Values.appWebhooks.url }}
{{- $src := include "creditsync.secretSource" (dict "root" . "name" "appWebhookSecret") | fromJson }}
{{- if not $src.secret }}
{{- fail "appWebhooks.url is set: set secrets.appWebhookSecret.value (whsec_...), or name a Secret holding key \"appWebhookSecret\" in secrets.appWebhookSecret.existingSecret or secrets.existingSecret" }}
{{- end }}
- name: CREDITSYNC_APP_WEBHOOK_URL
  value: {{ .Values.appWebhooks.url | quote }}
{{ include "creditsync.secretEnv" (dict "root" . "envs" (dict
      "CREDITSYNC_APP_WEBHOOK_SECRET" "appWebhookSecret")) | trim }}
{{- end }}
{{- end }}

{{/* API worker processes: `api.workers`, else one per whole CPU of the container's CPU
limit (or request), at least one. "1500m" and "1.5" both give 2. */}}
{{- define "creditsync.apiWorkers" -}}
{{- if .Values.api.workers -}}
{{- .Values.api.workers | int -}}
{{- else -}}
{{- $res := .Values.api.resources | default dict -}}
{{- $cpu := (dig "limits" "cpu" "" $res) | default (dig "requests" "cpu" "" $res) | toString -}}
{{- $milli := 0 -}}
{{- if hasSuffix "m" $cpu -}}
{{- $milli = trimSuffix "m" $cpu | int -}}
{{- else if $cpu -}}
{{- $milli = mulf (float64 $cpu) 1000 | int -}}
{{- end -}}
{{- max 1 (div (add $milli 999) 1000) -}}
{{- end -}}
{{- end }}
