{{/* Names and labels. */}}
{{- define "annfleet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "annfleet.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "annfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "annfleet.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "annfleet.shardName" -}}
{{- printf "%s-shard-%d" (include "annfleet.fullname" .root) (int .shard) -}}
{{- end -}}

{{/* Ports: all from the annfleet config (values.config). */}}
{{- define "annfleet.ports" -}}
{{- $s := .Values.config.shards | default dict -}}
{{- $r := .Values.config.router | default dict -}}
shardGrpc: {{ $s.base_port | default 50061 | int }}
shardMetrics: {{ $s.metrics_base_port | default 9161 | int }}
shardAdmin: {{ $s.admin_base_port | default 50161 | int }}
routerGrpc: {{ $r.port | default 50051 | int }}
routerMetrics: {{ $r.metrics_port | default 9150 | int }}
routerAdmin: {{ $r.admin_port | default 50052 | int }}
{{- end -}}

{{- define "annfleet.shardCount" -}}
{{- (.Values.config.shards | default dict).count | default 4 | int -}}
{{- end -}}
{{- define "annfleet.shardReplicas" -}}
{{- (.Values.config.shards | default dict).replicas | default 1 | int -}}
{{- end -}}

{{/*
The shard addresses the router is given (--shards, in shard order, comma-separated): per
shard, each replica pod's own DNS name, `|`-separated
(dns:///<shard-i>-<r>.<shard-i>.<ns>.svc.<domain>:<port> for r < replicas), so the router
holds one channel per replica and balances, retries and hedges across them itself (a
shard's headless Service name would give it one channel over all replicas).
*/}}
{{- define "annfleet.shardTargets" -}}
{{- $ports := include "annfleet.ports" . | fromYaml -}}
{{- $replicas := include "annfleet.shardReplicas" . | int -}}
{{- $shards := list -}}
{{- range $i := until (include "annfleet.shardCount" . | int) -}}
{{- $name := include "annfleet.shardName" (dict "root" $ "shard" $i) -}}
{{- $pods := list -}}
{{- range $r := until $replicas -}}
{{- $pods = append $pods (printf "dns:///%s-%d.%s.%s.svc.%s:%d" $name $r $name $.Release.Namespace $.Values.clusterDomain (int $ports.shardGrpc)) -}}
{{- end -}}
{{- $shards = append $shards (join "|" $pods) -}}
{{- end -}}
{{- join "," $shards -}}
{{- end -}}

{{/*
Every shard replica's admin address (--shard-admins of the router, which prepares,
commits and releases bundles on each replica during `annfleet rollout`): the StatefulSet
pod <shard-i>-<r> under the shard's headless Service.
*/}}
{{- define "annfleet.shardAdminTargets" -}}
{{- $ports := include "annfleet.ports" . | fromYaml -}}
{{- $replicas := include "annfleet.shardReplicas" . | int -}}
{{- $targets := list -}}
{{- range $i := until (include "annfleet.shardCount" . | int) -}}
{{- $name := include "annfleet.shardName" (dict "root" $ "shard" $i) -}}
{{- range $r := until $replicas -}}
{{- $targets = append $targets (printf "%s-%d.%s.%s.svc.%s:%d" $name $r $name $.Release.Namespace $.Values.clusterDomain (int $ports.shardAdmin)) -}}
{{- end -}}
{{- end -}}
{{- join "," $targets -}}
{{- end -}}

{{/* terminationGracePeriodSeconds for a component whose drain time is grace_s. */}}
{{- define "annfleet.terminationGrace" -}}
{{- add (int .root.Values.preStopSleepSeconds) (ceil (.grace | default 5.0) | int) (int .root.Values.terminationMarginSeconds) -}}
{{- end -}}

{{/*
Config keys the chart sets but core/config.py on main does not know yet: they are left out
of the rendered ConfigMap until they land (an unknown key is an error in load_config).
Drop each entry when its key lands.
*/}}
{{- define "annfleet.pendingConfigKeys" -}}
shards: []
router: []
top: []
{{- end -}}

{{/* The annfleet config file served to every process (YAML). */}}
{{- define "annfleet.config" -}}
{{- $config := deepCopy (.Values.config | default dict) -}}
{{- $owned := dict
  "bundle" (printf "%s/%s" .Values.bundles.mountPath .Values.bundles.current)
  "data_dir" "/var/lib/annfleet"
  "shards" (dict "host" "0.0.0.0")
  "router" (dict "host" "0.0.0.0")
  "tls" (dict
    "enabled" .Values.tls.enabled
    "cert" (ternary (printf "%s/tls.crt" .Values.tls.mountPath) "" .Values.tls.enabled)
    "key" (ternary (printf "%s/tls.key" .Values.tls.mountPath) "" .Values.tls.enabled)
    "ca" (ternary (printf "%s/ca.crt" .Values.tls.mountPath) "" .Values.tls.enabled)
    "require_client_cert" .Values.tls.requireClientCert)
  "admin" (dict "token_file" (printf "%s/token" .Values.admin.mountPath))
-}}
{{- $config = mustMergeOverwrite $config $owned -}}
{{- with include "annfleet.redisUrl" . -}}
{{- $_ := set $config "state" (mustMergeOverwrite (deepCopy ($config.state | default dict)) (dict "backend" "redis" "url" . "start_redis" false)) -}}
{{- end -}}
{{- $pending := include "annfleet.pendingConfigKeys" . | fromYaml -}}
{{- range $key := $pending.shards }}{{ $_ := unset $config.shards $key }}{{ end -}}
{{- range $key := $pending.router }}{{ $_ := unset $config.router $key }}{{ end -}}
{{- range $key := $pending.top }}{{ $_ := unset $config $key }}{{ end -}}
{{- toYaml $config -}}
{{- end -}}

{{/*
Volumes and mounts every annfleet container uses. Args: root, rw (the bundle volume
read-write: only the build and rollout Jobs write to it).
*/}}
{{- define "annfleet.volumes" -}}
{{- $v := .root.Values -}}
- name: config
  configMap:
    name: {{ include "annfleet.fullname" .root }}-config
- name: bundles
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-bundles" (include "annfleet.fullname" .root)) $v.bundles.persistence.existingClaim }}
    readOnly: {{ not .rw }}
- name: data
  emptyDir: {}
- name: tmp
  emptyDir: {}
- name: admin-token
  secret:
    secretName: {{ include "annfleet.adminSecret" .root }}
    defaultMode: 0440
{{- if $v.tls.enabled }}
- name: tls
  secret:
    secretName: {{ required "tls.existingSecret is required when tls.enabled" $v.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "annfleet.volumeMounts" -}}
{{- $v := .root.Values -}}
- name: config
  mountPath: /etc/annfleet/config.yaml
  subPath: config.yaml
  readOnly: true
- name: bundles
  mountPath: {{ $v.bundles.mountPath }}
  readOnly: {{ not .rw }}
- name: data
  mountPath: /var/lib/annfleet
- name: tmp
  mountPath: /tmp
- name: admin-token
  mountPath: {{ $v.admin.mountPath }}
  readOnly: true
{{- if $v.tls.enabled }}
- name: tls
  mountPath: {{ $v.tls.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "annfleet.adminSecret" -}}
{{- default (printf "%s-admin" (include "annfleet.fullname" .)) .Values.admin.existingSecret -}}
{{- end -}}

{{/*
Readiness, liveness and startup probes on a gRPC port (grpc.health.v1, overall service "").
Native gRPC probes speak plaintext only; with TLS the container runs `annfleet probe`.
Args: root, port, startupSeconds.
*/}}
{{- define "annfleet.probes" -}}
{{- $v := .root.Values -}}
{{- $check := dict "grpc" (dict "port" (int .port) "service" "") -}}
{{- if $v.tls.enabled -}}
{{- $cmd := list "annfleet" "probe" "--port" (toString (int .port)) "--ca" (printf "%s/ca.crt" $v.tls.mountPath) "--cert" (printf "%s/tls.crt" $v.tls.mountPath) "--key" (printf "%s/tls.key" $v.tls.mountPath) -}}
{{- $check = dict "exec" (dict "command" $cmd) -}}
{{- end -}}
{{- $period := int $v.probes.periodSeconds -}}
readinessProbe:
{{ toYaml (merge (dict "periodSeconds" $period "timeoutSeconds" (int $v.probes.timeoutSeconds) "failureThreshold" 1) $check) | indent 2 }}
livenessProbe:
{{ toYaml (merge (dict "periodSeconds" $period "timeoutSeconds" (int $v.probes.timeoutSeconds) "failureThreshold" (int $v.probes.livenessFailureThreshold)) $check) | indent 2 }}
startupProbe:
{{ toYaml (merge (dict "periodSeconds" $period "timeoutSeconds" (int $v.probes.timeoutSeconds) "failureThreshold" (div (int .startupSeconds) $period | add1)) $check) | indent 2 }}
{{- end -}}

{{- define "annfleet.preStop" -}}
lifecycle:
  preStop:
    exec:
      command: ["sleep", "{{ int .Values.preStopSleepSeconds }}"]
{{- end -}}

{{/* The chart's Redis (redis.enabled): its Service and StatefulSet name. */}}
{{- define "annfleet.redisName" -}}
{{- printf "%s-redis" (include "annfleet.fullname" .) -}}
{{- end -}}

{{/*
The Redis every router keeps its live state in: the chart's own (redis.enabled), else
redis.url, else "" (each router keeps its state in memory: config.state as given).
*/}}
{{- define "annfleet.redisUrl" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://%s.%s.svc.%s:%d/0" (include "annfleet.redisName" .) .Release.Namespace .Values.clusterDomain (int .Values.redis.port) -}}
{{- else -}}
{{- .Values.redis.url -}}
{{- end -}}
{{- end -}}

{{/*
redis-server's flags in the chart's Redis pod: those `annfleet up` gives its own
(core/cluster.py RedisChild: append-only file, fsync each second, no RDB snapshots), bound
to the pod's addresses; protected mode off because the NetworkPolicy, not a password,
keeps other pods out.
*/}}
{{- define "annfleet.redisArgs" -}}
- --port
- {{ .Values.redis.port | toString | quote }}
- --bind
- "* -::*"
- --protected-mode
- "no"
- --dir
- /data
- --appendonly
- "yes"
- --appendfsync
- everysec
- --save
- ""
- --maxmemory
- {{ printf "%dmb" (int .Values.redis.maxmemoryMb) | quote }}
- --maxmemory-policy
- noeviction
{{- end -}}
