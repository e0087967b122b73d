{{/*
Names, labels and the small pieces every template shares. Keeping them here is what lets
a Service selector, a NetworkPolicy and an HPA target agree on the same pods.
*/}}

{{/* Chart name, overridable. */}}
{{- define "maskfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Prefix of every object name: the release name when it already contains the chart name
(so release "maskfleet" gives "maskfleet-worker", not "maskfleet-maskfleet-worker").
Truncated to 38 characters so that the longest suffix, "-inference-canary-metrics" (25), still
fits in the 63 Kubernetes allows for a Service name.
*/}}
{{- define "maskfleet.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 38 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 38 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 38 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Namespace of every object. */}}
{{- define "maskfleet.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* chart-version label value. */}}
{{- define "maskfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "maskfleet.labels" -}}
helm.sh/chart: {{ include "maskfleet.chart" . }}
{{ include "maskfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: maskfleet
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels that identify the release; never change them after install (selectors are immutable). */}}
{{- define "maskfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "maskfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
Labels of one component. Call with (dict "ctx" $ "component" "inference" "variant" "stable");
variant is optional.
*/}}
{{- define "maskfleet.componentLabels" -}}
{{ include "maskfleet.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- if .variant }}
maskfleet.io/variant: {{ .variant }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component; same arguments as maskfleet.componentLabels. */}}
{{- define "maskfleet.componentSelectorLabels" -}}
{{ include "maskfleet.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- if .variant }}
maskfleet.io/variant: {{ .variant }}
{{- end }}
{{- end -}}

{{/* metadata.annotations block content shared by every object (may be empty). */}}
{{- define "maskfleet.annotations" -}}
{{- with .Values.commonAnnotations }}
{{- toYaml . }}
{{- end }}
{{- end -}}

{{/* Object names. */}}
{{- define "maskfleet.inference.fullname" -}}
{{- printf "%s-inference-%s" (include "maskfleet.fullname" .ctx) .variant -}}
{{- end -}}

{{- define "maskfleet.worker.fullname" -}}
{{- printf "%s-worker" (include "maskfleet.fullname" .) -}}
{{- end -}}

{{- define "maskfleet.redis.fullname" -}}
{{- printf "%s-redis" (include "maskfleet.fullname" .) -}}
{{- end -}}

{{- define "maskfleet.config.fullname" -}}
{{- printf "%s-config" (include "maskfleet.fullname" .) -}}
{{- end -}}

{{- define "maskfleet.training.fullname" -}}
{{- printf "%s-training" (include "maskfleet.fullname" .) -}}
{{- end -}}

{{/*
The retraining CronJob is named after the release so that the documented command
`kubectl create job --from=cronjob/<release>-retrain` works whatever the chart name.
52 characters: the CronJob controller appends 11 to name its Jobs.
*/}}
{{- define "maskfleet.retrain.cronjobName" -}}
{{- printf "%s-retrain" .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{/*
ServiceAccount name of a component. Call with (dict "ctx" $ "component" "inference").
*/}}
{{- define "maskfleet.serviceAccountName" -}}
{{- $sa := (index .ctx.Values .component).serviceAccount -}}
{{- if $sa.create -}}
{{- default (printf "%s-%s" (include "maskfleet.fullname" .ctx) .component) $sa.name -}}
{{- else -}}
{{- default "default" $sa.name -}}
{{- end -}}
{{- end -}}

{{/*
Image reference of a maskfleet component: [registry/]repository then @digest or :tag.
Call with (dict "ctx" $ "image" .Values.inference.image).
*/}}
{{- define "maskfleet.image" -}}
{{- $registry := .ctx.Values.image.registry -}}
{{- $repository := .image.repository -}}
{{- if $registry -}}
{{- $repository = printf "%s/%s" (trimSuffix "/" $registry) $repository -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (.image.tag | default .ctx.Values.image.tag | default .ctx.Chart.AppVersion | toString) -}}
{{- end -}}
{{- end -}}

{{/* Image reference of Redis. */}}
{{- define "maskfleet.redis.image" -}}
{{- $image := .Values.redis.image -}}
{{- $repository := $image.repository -}}
{{- if $image.registry -}}
{{- $repository = printf "%s/%s" (trimSuffix "/" $image.registry) $repository -}}
{{- end -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository ($image.tag | toString) -}}
{{- end -}}
{{- end -}}

{{/* imagePullSecrets block of the maskfleet pods (may be empty). */}}
{{- define "maskfleet.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Name of one in-chart Redis (call with dict "ctx" $ "role" "cache"|"state"). */}}
{{- define "maskfleet.redis.roleName" -}}
{{- printf "%s-%s" (include "maskfleet.redis.fullname" .ctx) .role -}}
{{- end -}}

{{/*
Pod labels of one in-chart Redis: selector labels only, nothing that changes with the chart
or app version, so an upgrade that does not change Redis does not restart it.
*/}}
{{- define "maskfleet.redis.podLabels" -}}
{{ include "maskfleet.componentSelectorLabels" (dict "ctx" .ctx "component" "redis" "variant" .role) }}
app.kubernetes.io/part-of: maskfleet
{{- end -}}

{{/* Secret holding the password of the in-chart Redis. */}}
{{- define "maskfleet.redis.authSecret" -}}
{{- default (printf "%s-auth" (include "maskfleet.redis.fullname" .)) .Values.redis.auth.existingSecret -}}
{{- end -}}

{{/*
URL of one Redis role (dict "ctx" $ "role" "cache"|"state"): the in-chart StatefulSet's, or
the external one. Empty when the external URL comes from a Secret.
*/}}
{{- define "maskfleet.redis.url" -}}
{{- $v := .ctx.Values.redis -}}
{{- if $v.enabled -}}
{{- printf "redis://%s:%d/%d" (include "maskfleet.redis.roleName" .) (int $v.port) (int $v.database) -}}
{{- else if $v.external.existingSecret -}}
{{- else if and (eq .role "cache") $v.external.cacheUrl -}}
{{- $v.external.cacheUrl -}}
{{- else if $v.external.url -}}
{{- $v.external.url -}}
{{- else -}}
{{- fail "redis.enabled is false: set redis.external.url or redis.external.existingSecret" -}}
{{- end -}}
{{- end -}}

{{/* True when the Redis URLs come from a Secret (they may carry a password). */}}
{{- define "maskfleet.redis.urlFromSecret" -}}
{{- if and (not .Values.redis.enabled) .Values.redis.external.existingSecret -}}true{{- end -}}
{{- end -}}

{{/* Where a mounted GCS key lives inside the pods. */}}
{{- define "maskfleet.gcs.keyDir" -}}/var/run/secrets/maskfleet/gcs{{- end -}}

{{/*
Environment shared by every maskfleet container: the config ConfigMap, plus the Redis URL
when it is secret. Values that differ per Deployment (stage, version, role) are set inline.
*/}}
{{- define "maskfleet.sharedEnvFrom" -}}
envFrom:
  - configMapRef:
      name: {{ include "maskfleet.config.fullname" . }}
{{- end -}}

{{/*
Redis env of one component (call with dict "ctx" $ "cache" bool): the state URL when it is
secret (else it is in the ConfigMap), the cache URL for the API (only the API has a cache),
and the password of each role from its Secret, never from a ConfigMap.
*/}}
{{- define "maskfleet.redisEnv" -}}
{{- $ctx := .ctx -}}
{{- $v := $ctx.Values.redis -}}
{{- $roles := ternary (list "state" "cache") (list "state") .cache -}}
{{- range $role := $roles }}
{{- $upper := upper $role }}
{{- if include "maskfleet.redis.urlFromSecret" $ctx }}
- name: MASKFLEET_{{ $upper }}_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.external.existingSecret }}
      key: {{ ternary (default $v.external.existingSecretKey $v.external.existingSecretCacheKey) $v.external.existingSecretKey (eq $role "cache") }}
{{- else if eq $role "cache" }}
- name: MASKFLEET_CACHE_REDIS_URL
  value: {{ include "maskfleet.redis.url" (dict "ctx" $ctx "role" "cache") | quote }}
{{- end }}
{{- if $v.enabled }}
- name: MASKFLEET_{{ $upper }}_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "maskfleet.redis.authSecret" $ctx }}
      key: {{ $v.auth.existingSecretKey }}
{{- else if $v.external.passwordSecret }}
- name: MASKFLEET_{{ $upper }}_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $v.external.passwordSecret }}
      key: {{ $v.external.passwordKey }}
{{- end }}
{{- end }}
{{- end -}}

{{/* MASKFLEET_MODEL_STAGE and, when pinned, MASKFLEET_MODEL_VERSION. Call with the model values. */}}
{{- define "maskfleet.modelEnv" -}}
- name: MASKFLEET_MODEL_STAGE
  value: {{ .stage | quote }}
{{- if gt (int .version) 0 }}
- name: MASKFLEET_MODEL_VERSION
  value: {{ .version | int | toString | quote }}
{{- end }}
{{- end -}}

{{/* Volumes every maskfleet pod mounts: a writable /tmp and, if set, the GCS key. */}}
{{- define "maskfleet.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .sizeLimit }}
{{- if .ctx.Values.gcs.keySecret.name }}
- name: gcs-key
  secret:
    secretName: {{ .ctx.Values.gcs.keySecret.name }}
    defaultMode: 0440
    items:
      - key: {{ .ctx.Values.gcs.keySecret.key }}
        path: key.json
{{- end }}
{{- end -}}

{{- define "maskfleet.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.gcs.keySecret.name }}
- name: gcs-key
  mountPath: {{ include "maskfleet.gcs.keyDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{/*
resources block with the GPU limit added when enabled.
Call with (dict "resources" .resources "gpu" .gpu).
*/}}
{{- define "maskfleet.resources" -}}
{{- $resources := deepCopy .resources -}}
{{- if .gpu.enabled -}}
{{- $limits := default (dict) $resources.limits -}}
{{- $_ := set $limits .gpu.resourceName (int .gpu.count) -}}
{{- $_ := set $resources "limits" $limits -}}
{{- end -}}
{{- toYaml $resources -}}
{{- end -}}

{{/*
nodeSelector and tolerations of a pod, with the GPU ones merged in when enabled.
Call with (dict "nodeSelector" ... "tolerations" ... "gpu" ...).
*/}}
{{- define "maskfleet.scheduling" -}}
{{- $nodeSelector := deepCopy (default (dict) .nodeSelector) -}}
{{- $tolerations := default (list) .tolerations -}}
{{- if .gpu.enabled -}}
{{- $nodeSelector = merge $nodeSelector (default (dict) .gpu.nodeSelector) -}}
{{- $tolerations = concat $tolerations (default (list) .gpu.tolerations) -}}
{{- end -}}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* httpGet/tcpSocket-free probe timings. Call with the probe values. */}}
{{- define "maskfleet.probeTimings" -}}
initialDelaySeconds: {{ .initialDelaySeconds }}
periodSeconds: {{ .periodSeconds }}
timeoutSeconds: {{ .timeoutSeconds }}
failureThreshold: {{ .failureThreshold }}
successThreshold: {{ .successThreshold }}
{{- end -}}

{{/* Checksum of the configuration a pod reads, so that a config change rolls the pods. */}}
{{- define "maskfleet.configChecksum" -}}
{{- include (print .Template.BasePath "/configmap.yaml") . | sha256sum -}}
{{- end -}}

{{/* PodDisruptionBudget budget fields; maxUnavailable 1 when neither is set. */}}
{{- define "maskfleet.pdbBudget" -}}
{{- if not (eq (toString .minAvailable) "") }}
minAvailable: {{ .minAvailable }}
{{- else if not (eq (toString .maxUnavailable) "") }}
maxUnavailable: {{ .maxUnavailable }}
{{- else }}
maxUnavailable: 1
{{- end }}
{{- end -}}

{{/*
podSelector content matching several components of this release.
Call with (dict "ctx" $ "components" (list "inference" "worker")).
*/}}
{{- define "maskfleet.networkPolicy.componentsSelector" -}}
matchLabels:
  {{- include "maskfleet.selectorLabels" .ctx | nindent 2 }}
matchExpressions:
  - key: app.kubernetes.io/component
    operator: In
    values:
      {{- toYaml .components | nindent 6 }}
{{- end -}}

{{/*
"true" when an object of a custom kind is to be rendered: its switch is true, or "auto" and
the cluster serves the kind (`helm template` sees only what --api-versions lists). Call with
(dict "ctx" $ "enabled" .Values.x.enabled "kind" "group/version/Kind").
*/}}
{{- define "maskfleet.crdEnabled" -}}
{{- $switch := toString .enabled -}}
{{- if or (eq $switch "true") (and (eq $switch "auto") (.ctx.Capabilities.APIVersions.Has .kind)) -}}
true
{{- end -}}
{{- end -}}

{{/* "true" when the HTTPRoutes are rendered (httpRoute.enabled, auto = Gateway API installed). */}}
{{- define "maskfleet.httpRoute.enabled" -}}
{{- include "maskfleet.crdEnabled" (dict "ctx" . "enabled" .Values.httpRoute.enabled "kind" "gateway.networking.k8s.io/v1/HTTPRoute") -}}
{{- end -}}

{{/* "true" when the GRPCRoute is rendered (grpcRoute.enabled, auto = GRPCRoute served; gRPC on). */}}
{{- define "maskfleet.grpcRoute.enabled" -}}
{{- if .Values.inference.grpc.enabled -}}
{{- include "maskfleet.crdEnabled" (dict "ctx" . "enabled" .Values.grpcRoute.enabled "kind" "gateway.networking.k8s.io/v1/GRPCRoute") -}}
{{- end -}}
{{- end -}}

{{/* Name of the GRPCRoute; the rollout weighs its split like the traffic HTTPRoute's. */}}
{{- define "maskfleet.grpcRoute.name" -}}
{{- printf "%s-grpc" (include "maskfleet.fullname" .) -}}
{{- end -}}

{{/* Name of the HTTPRoute holding the weighted stable/canary split of the main path. */}}
{{- define "maskfleet.trafficRoute.name" -}}
{{- printf "%s-traffic" (include "maskfleet.fullname" .) -}}
{{- end -}}

{{/*
The canary's live share of the main path, 0-100. The rollout (services/rollout) is the one
writer of this weight: a new release starts at 0 (no candidate is ready yet), and every
later `helm upgrade` renders what the live object says instead of a value from values.yaml,
so an upgrade never undoes a promotion or a rollback. `helm template` and --dry-run see no
cluster, hence 0. Call with (dict "ctx" $ "kind" "HTTPRoute"|"Ingress").
*/}}
{{- define "maskfleet.liveCanaryWeight" -}}
{{- $ctx := .ctx -}}
{{- $ns := include "maskfleet.namespace" $ctx -}}
{{- $canary := include "maskfleet.inference.fullname" (dict "ctx" $ctx "variant" "canary") -}}
{{- $weight := 0 -}}
{{- if eq .kind "HTTPRoute" -}}
{{- /* Only where the kind is served: lookup of an unknown kind fails the whole render. */ -}}
{{- if $ctx.Capabilities.APIVersions.Has "gateway.networking.k8s.io/v1/HTTPRoute" -}}
{{- $live := lookup "gateway.networking.k8s.io/v1" "HTTPRoute" $ns (include "maskfleet.trafficRoute.name" $ctx) -}}
{{- range $rule := dig "spec" "rules" list $live -}}
{{- range $ref := (get $rule "backendRefs" | default list) -}}
{{- if eq (get $ref "name") $canary -}}
{{- $weight = get $ref "weight" | default 0 | int -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- else -}}
{{- $live := lookup "networking.k8s.io/v1" "Ingress" $ns (printf "%s-canary" (include "maskfleet.fullname" $ctx)) -}}
{{- $weight = dig "metadata" "annotations" "nginx.ingress.kubernetes.io/canary-weight" "0" $live | int -}}
{{- end -}}
{{- min 100 (max 0 $weight) -}}
{{- end -}}

{{/*
Soft topology spread of one Deployment's pods: over zones, then over nodes, never blocking
scheduling (ScheduleAnyway). matchLabelKeys keeps each rollout revision spread on its own.
Explicit topologySpreadConstraints win. Call with (dict "ctx" $ "values" .Values.worker
"component" "worker" "variant" "").
*/}}
{{- define "maskfleet.topologySpread" -}}
{{- $v := .values -}}
{{- if $v.topologySpreadConstraints -}}
topologySpreadConstraints:
  {{- toYaml $v.topologySpreadConstraints | nindent 2 }}
{{- else if $v.topologySpread.enabled -}}
{{- $selector := include "maskfleet.componentSelectorLabels" (dict "ctx" .ctx "component" .component "variant" .variant) -}}
topologySpreadConstraints:
{{- range $key := list "topology.kubernetes.io/zone" "kubernetes.io/hostname" }}
  - maxSkew: {{ $v.topologySpread.maxSkew | int }}
    topologyKey: {{ $key }}
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- $selector | nindent 8 }}
    matchLabelKeys:
      - pod-template-hash
{{- end }}
{{- end -}}
{{- end -}}

{{/* "true" when ServiceMonitors are rendered (auto = the Prometheus Operator's CRD is served). */}}
{{- define "maskfleet.serviceMonitor.enabled" -}}
{{- include "maskfleet.crdEnabled" (dict "ctx" . "enabled" .Values.metrics.serviceMonitor.enabled "kind" "monitoring.coreos.com/v1/ServiceMonitor") -}}
{{- end -}}

{{/*
"true" when Managed Prometheus PodMonitorings are rendered. auto = the cluster serves
PodMonitoring and no ServiceMonitor is rendered: one scrape per target, never two.
*/}}
{{- define "maskfleet.podMonitoring.enabled" -}}
{{- $switch := toString .Values.metrics.podMonitoring.enabled -}}
{{- if eq $switch "true" -}}
true
{{- else if and (eq $switch "auto") (.Capabilities.APIVersions.Has "monitoring.googleapis.com/v1/PodMonitoring") (not (include "maskfleet.serviceMonitor.enabled" .)) -}}
true
{{- end -}}
{{- end -}}

{{/*
The scrape targets of this release, one per Service: (name, component, variant, port name).
ServiceMonitors and PodMonitorings both use it, so both produce the same `job` labels.
*/}}
{{- define "maskfleet.scrapeTargets" -}}
{{- $targets := list (dict "name" (include "maskfleet.inference.fullname" (dict "ctx" . "variant" "stable")) "component" "inference" "variant" "stable" "port" "metrics") -}}
{{- if .Values.inference.canary.enabled -}}
{{- $targets = append $targets (dict "name" (include "maskfleet.inference.fullname" (dict "ctx" . "variant" "canary")) "component" "inference" "variant" "canary" "port" "metrics") -}}
{{- end -}}
{{- $targets = append $targets (dict "name" (printf "%s-metrics" (include "maskfleet.worker.fullname" .)) "component" "worker" "variant" "" "port" "metrics") -}}
{{- toJson $targets -}}
{{- end -}}

{{/*
Google service account of a component (Workload Identity): its own entry, else
<fullname>-<component>@<project>.iam.gserviceaccount.com when a project is set, else the
shared fallback. Call with (dict "ctx" $ "component" "inference").
*/}}
{{- define "maskfleet.gcpServiceAccount" -}}
{{- $wi := .ctx.Values.gcs.workloadIdentity -}}
{{- $own := index (default dict $wi.gcpServiceAccounts) .component | default "" -}}
{{- if $own -}}
{{- $own -}}
{{- else if $wi.project -}}
{{- printf "%s-%s" (include "maskfleet.fullname" .ctx) .component | trunc 30 | trimSuffix "-" -}}@{{ $wi.project }}.iam.gserviceaccount.com
{{- else -}}
{{- $wi.gcpServiceAccount -}}
{{- end -}}
{{- end -}}

{{/* Secret and key holding the hashed API keys file the API mounts. */}}
{{- define "maskfleet.apiKeys.secretName" -}}
{{- .Values.apiKeys.existingSecret | default (printf "%s-api-keys" (include "maskfleet.fullname" .)) -}}
{{- end -}}
{{- define "maskfleet.apiKeys.secretKey" -}}
{{- ternary .Values.apiKeys.existingSecretKey "keys.json" (ne .Values.apiKeys.existingSecret "") -}}
{{- end -}}

{{/*
HTTPRoute matches for the public API under `base` ("" for the main path): a PathPrefix per
ingress.publicPaths and the exact root document, each with `headers` when given. Nothing else
on the API port (/docs, /openapi.json) is routed. Call with (dict "ctx" $ "base" "/model-a"
"headers" (list ...)).
*/}}
{{- define "maskfleet.publicMatches" -}}
{{- $base := .base | trimSuffix "/" -}}
{{- $headers := .headers -}}
{{- range $path := .ctx.Values.ingress.publicPaths }}
- path:
    type: PathPrefix
    value: {{ printf "%s%s" $base $path | quote }}
  {{- with $headers }}
  headers:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
- path:
    type: Exact
    value: {{ $base | default "/" | quote }}
  {{- with $headers }}
  headers:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/*
Batch-job storage confinement (services.jobs.settings.JobSettings), for the API and the worker:
the model repository, the training data and the feedback prefix are always protected.
*/}}
{{- define "maskfleet.jobEnv" -}}
{{- $jobs := .Values.jobs -}}
{{- $dataUri := dig "data" "uri" "" (.Values.training.config | default dict) | trimSuffix "/" -}}
{{- $feedbackUri := .Values.inference.feedback.uri | default (ternary (printf "%s/feedback" $dataUri) "" (ne $dataUri "")) -}}
{{- $protected := concat (list .Values.model.repository) (compact (list $dataUri $feedbackUri)) $jobs.protectedPrefixes -}}
- name: MASKFLEET_JOB_INPUT_PREFIXES
  value: {{ join "," $jobs.inputPrefixes | quote }}
- name: MASKFLEET_JOB_OUTPUT_PREFIXES
  value: {{ join "," $jobs.outputPrefixes | quote }}
- name: MASKFLEET_JOB_OVERWRITE_PREFIXES
  value: {{ join "," $jobs.overwritePrefixes | quote }}
- name: MASKFLEET_JOB_PROTECTED_PREFIXES
  value: {{ join "," (uniq $protected) | quote }}
{{- end -}}
