{{/* Names */}}
{{- define "rlhf.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rlhf.fullname" -}}
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

{{/* "<fullname>-<component>", e.g. include "rlhf.componentName" (list . "serving") */}}
{{- define "rlhf.componentName" -}}
{{- $ctx := index . 0 }}
{{- printf "%s-%s" (include "rlhf.fullname" $ctx | trunc 40 | trimSuffix "-") (index . 1) }}
{{- end }}

{{- define "rlhf.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "rlhf.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rlhf
{{- end }}

{{/* Selector labels of one component: include "rlhf.selectorLabels" (list . "serving") */}}
{{- define "rlhf.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "rlhf.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* All labels of one component's objects */}}
{{- define "rlhf.componentLabels" -}}
{{ include "rlhf.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
The image of a pod: include "rlhf.image" (list . gpuEnabled). A pod that requests GPUs runs
the CUDA build (`images/build.sh cuda` tags it <tag>-cuda), any other pod the CPU build
(`images/build.sh cpu`, i.e. `make image`, tags it <tag>); image.tag and image.cudaTag
override either.
*/}}
{{- define "rlhf.image" -}}
{{- $ctx := index . 0 }}
{{- $image := $ctx.Values.image }}
{{- $tag := default $ctx.Chart.AppVersion $image.tag }}
{{- if index . 1 }}
{{- $tag = default (printf "%s-cuda" $tag) $image.cudaTag }}
{{- end }}
{{- printf "%s:%s" $image.repository $tag }}
{{- end }}

{{- define "rlhf.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rlhf.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* ---------------------------------------------------------------- connections */}}

{{- define "rlhf.kafka.clusterName" -}}
{{- include "rlhf.componentName" (list . "kafka") }}
{{- end }}

{{- define "rlhf.kafka.bootstrapServers" -}}
{{- if .Values.kafka.strimzi.enabled }}
{{- printf "%s-kafka-bootstrap.%s.svc:9092" (include "rlhf.kafka.clusterName" .) .Release.Namespace }}
{{- else }}
{{- .Values.kafka.external.bootstrapServers }}
{{- end }}
{{- end }}

{{- define "rlhf.postgresql.name" -}}
{{- include "rlhf.componentName" (list . "postgresql") }}
{{- end }}

{{- define "rlhf.secretName" -}}
{{- include "rlhf.fullname" . }}
{{- end }}

{{- define "rlhf.registry.claimName" -}}
{{- default (include "rlhf.componentName" (list . "registry")) .Values.registry.existingClaim }}
{{- end }}

{{/* ------------------------------------------------------ settings shared by all */}}

{{/*
RLHF_ variables every process reads (ProcessSettings.log_level and KafkaSettings).
Rendered into the "<fullname>-common" ConfigMap.
*/}}
{{- define "rlhf.settings.common" -}}
{{- $k := .Values.kafka -}}
RLHF_LOG_LEVEL: {{ .Values.logLevel | quote }}
RLHF_KAFKA__BOOTSTRAP_SERVERS: {{ include "rlhf.kafka.bootstrapServers" . | quote }}
RLHF_KAFKA__REQUEST_TIMEOUT_MS: {{ $k.requestTimeoutMs | int64 | quote }}
RLHF_KAFKA__TOPICS__COMPLETIONS: {{ $k.topics.completions | quote }}
RLHF_KAFKA__TOPICS__FEEDBACK: {{ $k.topics.feedback | quote }}
RLHF_KAFKA__TOPICS__DLQ: {{ $k.topics.dlq | quote }}
RLHF_KAFKA__TOPICS__POLICY: {{ $k.topics.policy | quote }}
RLHF_KAFKA__TOPICS__PARTITIONS: {{ $k.topics.partitions | int64 | quote }}
RLHF_KAFKA__TOPICS__REPLICATION_FACTOR: {{ $k.topics.replicationFactor | int64 | quote }}
{{- if not $k.strimzi.enabled }}
RLHF_KAFKA__SECURITY_PROTOCOL: {{ $k.external.securityProtocol | quote }}
{{- with $k.external.sasl.mechanism }}
RLHF_KAFKA__SASL_MECHANISM: {{ . | quote }}
{{- end }}
{{- with $k.external.sasl.username }}
RLHF_KAFKA__SASL_USERNAME: {{ . | quote }}
{{- end }}
{{- if $k.external.caSecret }}
RLHF_KAFKA__SSL_CAFILE: {{ printf "/etc/rlhf/kafka-ca/%s" $k.external.caSecretKey | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
env entries of a process that a ConfigMap cannot hold: include "rlhf.env" (list . component).
From Secrets: Kafka's SASL password (every process), the feedback store URL (ingester,
training, deploy-controller) and the API keys (serving and deploy-controller, the same keys).
From the downward API (serving): the replica's fleet id (the pod name) and the URL the
deploy controller scrapes it on (the pod IP; a pod's host name does not resolve elsewhere).
*/}}
{{- define "rlhf.env" -}}
{{- $ctx := index . 0 }}
{{- $component := index . 1 }}
{{- if eq $component "serving" }}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: RLHF_REPLICA__ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: RLHF_REPLICA__URL
  value: {{ printf "http://$(POD_IP):%d" ($ctx.Values.serving.http.port | int) | quote }}
{{- end }}
{{- $sasl := $ctx.Values.kafka.external.sasl }}
{{- if and (not $ctx.Values.kafka.strimzi.enabled) (or $sasl.password $sasl.existingSecret) }}
- name: RLHF_KAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ default (include "rlhf.secretName" $ctx) $sasl.existingSecret }}
      key: {{ ternary $sasl.existingSecretKey "kafka-sasl-password" (ne $sasl.existingSecret "") }}
{{- end }}
{{- if has $component (list "ingester" "training" "deploy-controller") }}
{{- $db := $ctx.Values.externalDatabase }}
{{- $external := and (not $ctx.Values.postgresql.enabled) (ne $db.existingSecret "") }}
- name: RLHF_DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ ternary $db.existingSecret (include "rlhf.secretName" $ctx) $external }}
      key: {{ ternary $db.existingSecretKey "database-url" $external }}
{{- end }}
{{- $auth := $ctx.Values.auth }}
{{- if and (has $component (list "serving" "deploy-controller")) (not $auth.allowOpen) }}
- name: RLHF_AUTH__KEYS
  valueFrom:
    secretKeyRef:
      name: {{ default (include "rlhf.secretName" $ctx) $auth.existingSecret }}
      key: {{ ternary $auth.existingSecretKey "api-keys.json" (ne $auth.existingSecret "") }}
{{- end }}
{{- end }}

{{/* envFrom of a process: the common ConfigMap and its own. */}}
{{- define "rlhf.envFrom" -}}
- configMapRef:
    name: {{ include "rlhf.componentName" (list (index . 0) "common") }}
- configMapRef:
    name: {{ include "rlhf.componentName" (list (index . 0) (index . 1)) }}
{{- end }}

{{/* Volumes every rlhf pod may mount: registry and Kafka CA. include with (list . withRegistry) */}}
{{- define "rlhf.volumes" -}}
{{- $ctx := index . 0 }}
{{- if index . 1 }}
- name: registry
  persistentVolumeClaim:
    claimName: {{ include "rlhf.registry.claimName" $ctx }}
{{- end }}
{{- if and (not $ctx.Values.kafka.strimzi.enabled) $ctx.Values.kafka.external.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ $ctx.Values.kafka.external.caSecret }}
{{- end }}
{{- end }}

{{- define "rlhf.volumeMounts" -}}
{{- $ctx := index . 0 }}
{{- if index . 1 }}
- name: registry
  mountPath: {{ $ctx.Values.registry.mountPath }}
{{- end }}
{{- if and (not $ctx.Values.kafka.strimzi.enabled) $ctx.Values.kafka.external.caSecret }}
- name: kafka-ca
  mountPath: /etc/rlhf/kafka-ca
  readOnly: true
{{- end }}
{{- end }}

{{/* Pod annotations that roll pods when their configuration changes (the deploy
     controller reads its rollout policy file once, at start). */}}
{{- define "rlhf.configChecksum" -}}
{{- $ctx := index . 0 }}
{{- $component := index . 1 }}
{{- $files := ternary (include "rlhf.rolloutPolicy" $ctx) "" (eq $component "deploy-controller") -}}
checksum/config: {{ printf "%s\n%s\n%s" (include "rlhf.settings.common" $ctx) (include (printf "rlhf.settings.%s" $component) $ctx) $files | sha256sum }}
{{- end }}

{{/* ---------------------------------------------------------- per-process settings */}}

{{/* ServeSettings (rlhf serve) */}}
{{- define "rlhf.settings.serving" -}}
{{- $s := .Values.serving -}}
RLHF_REGISTRY__ROOT: {{ .Values.registry.mountPath | quote }}
RLHF_HTTP__HOST: "0.0.0.0"
RLHF_HTTP__PORT: {{ $s.http.port | int64 | quote }}
RLHF_HTTP__ROOT_PATH: {{ $s.http.rootPath | quote }}
RLHF_GRPC__ENABLED: {{ $s.grpc.enabled | quote }}
RLHF_GRPC__HOST: "0.0.0.0"
RLHF_GRPC__PORT: {{ $s.grpc.port | int64 | quote }}
RLHF_GRPC__MAX_WORKERS: {{ $s.grpc.maxWorkers | int64 | quote }}
RLHF_ENGINE__TENSOR_PARALLEL_SIZE: {{ $s.engine.tensorParallelSize | int64 | quote }}
RLHF_ENGINE__DTYPE: {{ $s.engine.dtype | quote }}
{{- if not (kindIs "invalid" $s.engine.maxModelLen) }}
RLHF_ENGINE__MAX_MODEL_LEN: {{ $s.engine.maxModelLen | int64 | quote }}
{{- end }}
RLHF_ENGINE__GPU_MEMORY_UTILIZATION: {{ $s.engine.gpuMemoryUtilization | quote }}
RLHF_ENGINE__MAX_NUM_SEQS: {{ $s.engine.maxNumSeqs | int64 | quote }}
RLHF_ENGINE__MAX_WAITING_REQUESTS: {{ $s.engine.maxWaitingRequests | int64 | quote }}
RLHF_ENGINE__ENFORCE_EAGER: {{ $s.engine.enforceEager | quote }}
RLHF_ENGINE__SEED: {{ $s.engine.seed | int64 | quote }}
{{- if not (kindIs "invalid" $s.engine.kvCacheSpaceGib) }}
RLHF_ENGINE__KV_CACHE_SPACE_GIB: {{ $s.engine.kvCacheSpaceGib | quote }}
{{- end }}
{{- with $s.model }}
RLHF_MODEL: {{ . | quote }}
{{- end }}
{{- with $s.servedModelName }}
RLHF_SERVED_MODEL_NAME: {{ . | quote }}
{{- end }}
{{- with $s.policyVersion }}
RLHF_POLICY_VERSION: {{ . | quote }}
{{- end }}
RLHF_FOLLOW_POLICY_EVENTS: {{ $s.followPolicyEvents | quote }}
RLHF_PUBLISH_EVENTS: {{ $s.publishEvents | quote }}
RLHF_EVENT_BUFFER_SIZE: {{ $s.eventBufferSize | int64 | quote }}
RLHF_DEFAULT_MAX_TOKENS: {{ $s.defaultMaxTokens | int64 | quote }}
RLHF_REPLICA__HEARTBEAT_INTERVAL_S: {{ $s.replica.heartbeatIntervalS | quote }}
{{- if .Values.auth.allowOpen }}
RLHF_AUTH__ALLOW_OPEN: "true"
{{- end }}
{{- end }}

{{/* IngestSettings (rlhf ingest) */}}
{{- define "rlhf.settings.ingester" -}}
{{- $s := .Values.ingester -}}
RLHF_DATABASE__ECHO: {{ .Values.database.echo | quote }}
RLHF_INGEST__GROUP_ID: {{ $s.groupId | quote }}
RLHF_INGEST__BATCH_SIZE: {{ $s.batchSize | int64 | quote }}
RLHF_INGEST__POLL_TIMEOUT_MS: {{ $s.pollTimeoutMs | int64 | quote }}
RLHF_INGEST__FETCH_MIN_BYTES: {{ $s.fetchMinBytes | int64 | quote }}
RLHF_INGEST__FETCH_MAX_WAIT_MS: {{ $s.fetchMaxWaitMs | int64 | quote }}
RLHF_INGEST__SESSION_TIMEOUT_MS: {{ $s.sessionTimeoutMs | int64 | quote }}
RLHF_INGEST__MAX_POLL_INTERVAL_MS: {{ $s.maxPollIntervalMs | int64 | quote }}
RLHF_INGEST__METRICS_PORT: {{ $s.metricsPort | int64 | quote }}
{{- end }}

{{/* TrainSettings (rlhf train cycle) */}}
{{- define "rlhf.settings.training" -}}
RLHF_DATABASE__ECHO: {{ .Values.database.echo | quote }}
RLHF_REGISTRY__ROOT: {{ .Values.registry.mountPath | quote }}
RLHF_TRAIN__MIN_NEW_RANKINGS: {{ .Values.training.minNewRankings | int64 | quote }}
RLHF_TRAIN__METRICS_PORT: {{ .Values.training.metricsPort | int64 | quote }}
{{- if .Values.training.recipes }}
RLHF_TRAIN__CONFIG_DIR: "/etc/rlhf/recipes"
{{- end }}
{{- end }}

{{/* DeploySettings (rlhf deploy controller) */}}
{{- define "rlhf.settings.deploy-controller" -}}
{{- $s := .Values.deployController -}}
{{- $g := $s.gates -}}
{{- $h := $g.humanEval -}}
{{- $r := $s.rollout -}}
RLHF_DATABASE__ECHO: {{ .Values.database.echo | quote }}
RLHF_REGISTRY__ROOT: {{ .Values.registry.mountPath | quote }}
RLHF_DEPLOY__AUTO_PROMOTE: {{ $s.autoPromote | quote }}
RLHF_DEPLOY__HOST: "0.0.0.0"
RLHF_DEPLOY__PORT: {{ $s.port | int64 | quote }}
RLHF_DEPLOY__GROUP_ID: {{ $s.groupId | quote }}
RLHF_DEPLOY__POLL_TIMEOUT_MS: {{ $s.pollTimeoutMs | int64 | quote }}
RLHF_DEPLOY__SESSION_TIMEOUT_MS: {{ $s.sessionTimeoutMs | int64 | quote }}
RLHF_DEPLOY__MAX_POLL_INTERVAL_MS: {{ $s.maxPollIntervalMs | int64 | quote }}
RLHF_GATES__MIN_REWARD_IMPROVEMENT: {{ $g.minRewardImprovement | quote }}
RLHF_GATES__MAX_KL: {{ $g.maxKl | quote }}
RLHF_GATES__MAX_LENGTH_DRIFT: {{ $g.maxLengthDrift | quote }}
RLHF_GATES__MIN_WIN_RATE: {{ $g.minWinRate | quote }}
RLHF_GATES__NUM_PROMPTS: {{ $g.numPrompts | int64 | quote }}
RLHF_GATES__HOLDOUT_SHARE: {{ $g.holdoutShare | quote }}
{{- with $g.evalPromptFile }}
RLHF_GATES__EVAL_PROMPT_FILE: {{ . | quote }}
{{- end }}
RLHF_GATES__TRAFFIC_SCAN: {{ $g.trafficScan | int64 | quote }}
RLHF_GATES__SAMPLES_PER_PROMPT: {{ $g.samplesPerPrompt | int64 | quote }}
RLHF_GATES__CONFIDENCE: {{ $g.confidence | quote }}
RLHF_GATES__SEQUENTIAL_LOOKS: {{ $g.sequentialLooks | int64 | quote }}
RLHF_GATES__POWER: {{ $g.power | quote }}
RLHF_GATES__LENGTH_CONTROLLED: {{ $g.lengthControlled | quote }}
{{- if not (kindIs "invalid" $g.unfinishedPenalty) }}
RLHF_GATES__UNFINISHED_PENALTY: {{ $g.unfinishedPenalty | quote }}
{{- end }}
RLHF_GATES__MAX_DIVERSITY_DROP: {{ $g.maxDiversityDrop | quote }}
RLHF_GATES__MAX_REPETITION_INCREASE: {{ $g.maxRepetitionIncrease | quote }}
RLHF_GATES__MIN_JUDGE_RATIO: {{ $g.minJudgeRatio | quote }}
RLHF_GATES__MAX_ALIGNMENT_TAX: {{ $g.maxAlignmentTax | quote }}
{{- with $g.capabilityFile }}
RLHF_GATES__CAPABILITY_FILE: {{ . | quote }}
{{- end }}
RLHF_GATES__BOOTSTRAP_RESAMPLES: {{ $g.bootstrapResamples | int64 | quote }}
{{- with $g.judgeModel }}
RLHF_GATES__JUDGE_MODEL: {{ . | quote }}
{{- end }}
{{- if not (kindIs "invalid" $g.maxNewTokens) }}
RLHF_GATES__MAX_NEW_TOKENS: {{ $g.maxNewTokens | int64 | quote }}
{{- end }}
RLHF_GATES__TEMPERATURE: {{ $g.temperature | quote }}
RLHF_GATES__SEED: {{ $g.seed | int64 | quote }}
RLHF_GATES__BATCH_SIZE: {{ $g.batchSize | int64 | quote }}
RLHF_GATES__MAX_PROMPT_TOKENS: {{ $g.maxPromptTokens | int64 | quote }}
{{- with $g.rewardModel }}
RLHF_GATES__REWARD_MODEL: {{ . | quote }}
{{- end }}
{{- with $g.reference }}
RLHF_GATES__REFERENCE: {{ . | quote }}
{{- end }}
RLHF_GATES__DEVICE: {{ ternary "cuda" "cpu" $s.gpu.enabled | quote }}
RLHF_GATES__HUMAN_EVAL__REQUIRED: {{ $h.required | quote }}
RLHF_GATES__HUMAN_EVAL__MIN_ITEMS: {{ $h.minItems | int64 | quote }}
RLHF_GATES__HUMAN_EVAL__MIN_LOWER_BOUND: {{ $h.minLowerBound | quote }}
RLHF_GATES__HUMAN_EVAL__CONFIDENCE: {{ $h.confidence | quote }}
RLHF_ROLLOUT__STAGED: {{ $r.staged | quote }}
RLHF_ROLLOUT__MAX_UNAVAILABLE: {{ $r.maxUnavailable | toString | quote }}
RLHF_ROLLOUT__CANARY_REPLICAS: {{ $r.canaryReplicas | int64 | quote }}
RLHF_ROLLOUT__POLICY_FILE: {{ include "rlhf.rolloutPolicy.path" . | quote }}
RLHF_ROLLOUT__STALE_AFTER_S: {{ $r.staleAfterS | quote }}
RLHF_ROLLOUT__SWAP_TIMEOUT_S: {{ $r.swapTimeoutS | quote }}
RLHF_ROLLOUT__WATCH_S: {{ $r.watchS | quote }}
{{- if .Values.auth.allowOpen }}
RLHF_AUTH__ALLOW_OPEN: "true"
{{- end }}
{{- end }}

{{/* The online-evaluation policy (OnlinePolicy, deploy/online.py): the YAML file
     RLHF_ROLLOUT__POLICY_FILE names, from deployController.rollout.policy. */}}
{{- define "rlhf.rolloutPolicy" -}}
{{- toYaml .Values.deployController.rollout.policy }}
{{- end }}

{{- define "rlhf.rolloutPolicy.dir" -}}
/etc/rlhf/rollout
{{- end }}

{{- define "rlhf.rolloutPolicy.path" -}}
{{- printf "%s/policy.yaml" (include "rlhf.rolloutPolicy.dir" .) }}
{{- end }}
